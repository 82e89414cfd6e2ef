"""Task heads on top of :class:`~repalign.models.vilbert.model.ViLBERT`.

Each head is built only when its task is selected, so no parameter goes without a gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from repalign.models.vilbert.model import init_weights


class MLMHead(nn.Module):
    """BERT's prediction head: transform to the word-embedding width, then a decoder
    tied to the text tower's word embeddings, plus a bias.

    The embedding matrix is passed to :meth:`forward` rather than stored, so the
    state dict holds it once (safetensors refuses shared tensors).
    """

    def __init__(self, hidden_size: int, embedding_width: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, embedding_width)
        self.norm = nn.LayerNorm(embedding_width, eps=1e-12)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.dense.apply(init_weights)

    def forward(self, text: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, H) fused text states, (V, E) embedding matrix -> (B, T, V) logits."""
        x = self.norm(F.gelu(self.dense(text)))
        return F.linear(x, word_embeddings, self.bias)


class MIMHead(nn.Module):
    """Predicts the (stop-gradient) target encoding of a masked patch from its fused state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(F.gelu(self.dense(x))))


class PairHead(nn.Module):
    """One logit per image-text pair from the fused pooled outputs.

    ViLBERT combines the two pooled vectors by element-wise product; a product of two
    near-zero vectors at initialisation passes almost no gradient, so the head also
    sees both vectors themselves: MLP over ``[t, v, t * v]``.
    """

    def __init__(self, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(3 * hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.out = nn.Linear(hidden_size, 1)
        self.apply(init_weights)

    def forward(self, text_pooled: torch.Tensor, vision_pooled: torch.Tensor) -> torch.Tensor:
        x = torch.cat([text_pooled, vision_pooled, text_pooled * vision_pooled], dim=-1)
        return self.out(self.norm(F.gelu(self.dense(self.dropout(x))))).squeeze(-1)  # (B,)


class ContrastiveHead(nn.Module):
    """ALBEF's image-text contrastive projections and learnable temperature."""

    def __init__(self, hidden_size: int, embed_dim: int, temperature: float = 0.07) -> None:
        super().__init__()
        self.text = nn.Linear(hidden_size, embed_dim)
        self.vision = nn.Linear(hidden_size, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.text.apply(init_weights)
        self.vision.apply(init_weights)

    def forward(self, text_cls: torch.Tensor, vision_cls: torch.Tensor) -> torch.Tensor:
        """Similarity logits (B_text, B_image), scaled by 1/temperature (at most 100)."""
        t = F.normalize(self.text(text_cls), dim=-1)
        v = F.normalize(self.vision(vision_cls), dim=-1)
        return self.log_scale.clamp(max=math.log(100.0)).exp() * t @ v.T
