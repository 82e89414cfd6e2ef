"""ViLBERT: a BERT text stream and a ViT vision stream joined by co-attention layers.

Shapes: B batch, T text tokens, P image patches, H ``config.hidden_size``.
The text tower is a transformers ``BertModel`` and the vision tower a timm
``VisionTransformer`` (class token at position 0). Their last states are
projected to ``H`` (identity when the widths already match) and go through
``config.depth`` fusion layers. A co-attention layer (Lu et al. 2019) lets text
queries attend to vision keys/values and vision queries to text keys/values in
parallel; each result is projected, dropped out and added to *its own* stream's
input, then LayerNorm'd, and each stream has its own feed-forward block. The
other fusion layers apply self-attention within each stream.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import BertConfig, BertModel

from repalign.models.vilbert.config import ViLBERTConfig
from repalign.models.weights import load_state, read_state_dict

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- towers
def build_text_tower(config: ViLBERTConfig, *, load_weights: bool = True) -> BertModel:
    """BERT without its pooler (unused parameters would break DDP), SDPA attention.

    With ``{"pretrained": DIR}`` the weights come from the local directory when
    ``load_weights`` (otherwise only its ``config.json`` is read, e.g. before a
    checkpoint's state dict replaces every weight).
    """
    spec = dict(config.text)
    pretrained = spec.pop("pretrained", None)
    if pretrained is not None:
        path = Path(pretrained)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text tower directory {path} has no config.json; pass a local transformers "
                "BERT directory as text={'pretrained': DIR}"
            )
        if load_weights:
            return BertModel.from_pretrained(
                str(path),
                add_pooling_layer=False,
                attn_implementation="sdpa",
                local_files_only=True,
                **spec,
            )
        bert_config = BertConfig.from_pretrained(str(path), local_files_only=True, **spec)
    else:
        bert_config = BertConfig(**spec)
    bert_config._attn_implementation = "sdpa"
    return BertModel(bert_config, add_pooling_layer=False)


def build_vision_tower(
    config: ViLBERTConfig, *, load_weights: bool = True, device: str | None = None
) -> VisionTransformer:
    """A timm ViT with a class token and no classifier head.

    ``{"model": NAME, "weights": FILE}`` builds the named architecture and, when
    ``load_weights``, reads the local weights file (safetensors, or a state dict
    loaded with ``torch.load(weights_only=True)``); a head in the file is ignored.
    """
    spec = dict(config.vision)
    name = spec.pop("model", None)
    weights = spec.pop("weights", None)
    conv_stem = bool(spec.pop("conv_stem", False))
    with torch.device(device) if device else _nullcontext():
        if name is not None:
            tower = timm.create_model(name, pretrained=False, num_classes=0, **spec)
        else:
            tower = VisionTransformer(num_classes=0, global_pool="token", **spec)
    if not isinstance(tower, VisionTransformer) or tower.cls_token is None:
        raise ValueError(
            f"vision tower {name or 'VisionTransformer'} must be a timm VisionTransformer with a "
            "class token (ViLBERT pools and contrasts on it)"
        )
    if conv_stem:
        if weights is not None:
            raise ValueError(
                "vision conv_stem replaces the patch embedding, so pretrained ViT weights do "
                "not fit it; use conv_stem only for a randomly initialised vision tower"
            )
        tower.patch_embed.proj = conv_stem_for(tower)
    if weights is not None and load_weights:
        state = read_state_dict(weights)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        load_state(tower, state, f"vision weights {weights}")
    return tower


def conv_stem_for(tower: VisionTransformer) -> nn.Sequential:
    """A convolutional patch embedding (Xiao et al. 2021, "Early convolutions help
    transformers see better"): stride-2 3x3 convolutions with GELU down to the patch
    grid, then a 1x1 projection to the embedding width; same output shape as the
    linear patch projection it replaces. The patch size must be a power of two."""
    patch = int(tower.patch_embed.patch_size[0])
    steps = patch.bit_length() - 1
    if patch != 2**steps or patch < 2:
        raise ValueError(f"conv_stem needs a power-of-two patch size, got {patch}")
    width, layers, channels = tower.embed_dim, [], 3
    for i in range(steps):
        out = max(16, width // 2 ** (steps - 1 - i))
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
        channels = out
    layers.append(nn.Conv2d(channels, width, 1))
    return nn.Sequential(*layers)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ----------------------------------------------------------------------------- fusion
class Attention(nn.Module):
    """Multi-head attention of ``query`` states over ``context`` states (SDPA).

    ``key_mask`` is ``(B, Tk)`` with True (or 1) = attend, False = padding.
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = attention_dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, H/heads)
        b, n, h = x.shape
        return x.view(b, n, self.num_heads, h // self.num_heads).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = (
            self._heads(self.query(query)),
            self._heads(self.key(context)),
            self._heads(self.value(context)),
        )
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)  # (B, Tq, H)


class AttentionBlock(nn.Module):
    """Attention, output projection, dropout, residual onto ``query`` (its own stream), post-LN."""

    def __init__(self, config: ViLBERTConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.attention = Attention(h, config.num_heads, config.attention_dropout)
        self.output = nn.Linear(h, h)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(h, eps=1e-12)

    def forward(
        self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        attended = self.dropout(self.output(self.attention(query, context, key_mask)))
        return self.norm(query + attended)


class FeedForward(nn.Module):
    """BERT's intermediate + output block with residual and post-LN."""

    def __init__(self, config: ViLBERTConfig) -> None:
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.hidden_size, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class FusionLayer(nn.Module):
    """One fusion layer: co-attention (``co_attention=True``) or dual self-attention.

    Returns ``(text, vision)``; the extractor picks one with ``output_index``.
    """

    def __init__(self, config: ViLBERTConfig, *, co_attention: bool) -> None:
        super().__init__()
        self.co_attention = co_attention
        self.text_attention = AttentionBlock(config)
        self.vision_attention = AttentionBlock(config)
        self.text_ffn = FeedForward(config)
        self.vision_ffn = FeedForward(config)

    def forward(
        self, text: torch.Tensor, vision: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.co_attention:
            # Both read the layer's inputs (parallel); each residual goes to its own stream.
            new_text = self.text_attention(text, vision, None)
            new_vision = self.vision_attention(vision, text, text_mask)
        else:
            new_text = self.text_attention(text, text, text_mask)
            new_vision = self.vision_attention(vision, vision, None)
        return self.text_ffn(new_text), self.vision_ffn(new_vision)


class Pooler(nn.Module):
    """Dense + tanh on the mean of a stream's states (padding excluded).

    BERT pools its [CLS] token; on small models trained from scratch a mean-pooled
    summary makes alignment prediction learn several times faster (a [CLS] token
    carries almost no per-sample signal early in training), so ViLBERT pools means.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            pooled = states.mean(1)
        else:
            m = mask.to(states.dtype)[..., None]
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.tanh(self.dense(pooled))


# ----------------------------------------------------------------------------- model
@dataclass
class ViLBERTOutput:
    """What one forward pass returns.

    Attributes:
        text: final fused text states, (B, T, H).
        vision: final fused vision states, (B, 1+P, H); position 0 is the class token.
        text_pooled / vision_pooled: pooled (mean, padding excluded) fused streams, (B, H).
        text_tower / vision_tower: unimodal tower outputs projected to H (B, T, H) and
            (B, 1+P, H), before any fusion (ITC contrasts their first tokens).
        fusion_states: ``(text, vision)`` after each fusion layer when requested.
    """

    text: torch.Tensor
    vision: torch.Tensor
    text_pooled: torch.Tensor
    vision_pooled: torch.Tensor
    text_tower: torch.Tensor
    vision_tower: torch.Tensor
    fusion_states: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation for the modules ViLBERT adds (towers keep their own)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)


class ViLBERT(nn.Module):
    """The two-stream model. ``mask_token=True`` adds the learned patch-mask embedding
    masked image modelling needs (left out otherwise: it would get no gradient)."""

    def __init__(
        self, config: ViLBERTConfig, *, mask_token: bool = False, load_weights: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.text = build_text_tower(config, load_weights=load_weights)
        self.vision = build_vision_tower(config, load_weights=load_weights)
        text_width, vision_width = self.text.config.hidden_size, self.vision.embed_dim
        h = config.hidden_size
        self.text_proj = nn.Linear(text_width, h) if text_width != h else nn.Identity()
        self.vision_proj = nn.Linear(vision_width, h) if vision_width != h else nn.Identity()
        self.fusion = nn.ModuleList(
            FusionLayer(config, co_attention=i in config.cross_attention_layers)
            for i in range(config.depth)
        )
        self.text_pooler = Pooler(h)
        self.vision_pooler = Pooler(h)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vision_width)) if mask_token else None
        for module in (
            self.text_proj,
            self.vision_proj,
            self.fusion,
            self.text_pooler,
            self.vision_pooler,
        ):
            module.apply(init_weights)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        if config.freeze_text:
            self.text.requires_grad_(False)
        if config.freeze_vision:
            self.vision.requires_grad_(False)

    # -- properties the trainer and adapter use
    @property
    def num_patches(self) -> int:
        return int(self.vision.patch_embed.num_patches)

    def pretrained_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes (relative to this module) of towers loaded from
        pretrained weights: the trainer gives them a smaller learning rate."""
        prefixes = []
        if self.config.text_pretrained is not None:
            prefixes.append("text.")
        if self.config.vision_weights is not None:
            prefixes.append("vision.")
        return tuple(prefixes)

    # -- the three stages, usable on their own (objectives reuse tower outputs)
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text tower + projection: (B, T) ids -> (B, T, H)."""
        # A 4-D key mask (True = attend) reaches SDPA as it is; given the 2-D mask,
        # transformers first asks the device whether the batch has padding at all (a host
        # sync on every text forward in eager mode).
        key_mask = attention_mask.bool()[:, None, None, :]
        states = self.text(input_ids=input_ids, attention_mask=key_mask).last_hidden_state
        return self.text_proj(states)

    def encode_image(
        self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vision tower + projection: (B, 3, S, S) -> (B, 1+P, H).

        ``patch_mask`` (B, P) bool replaces those patch embeddings with the learned
        mask token before position embeddings are added.
        """
        vit = self.vision
        x = vit.patch_embed(pixel_values)  # (B, P, Dv)
        if patch_mask is not None:
            if self.mask_token is None:
                raise ValueError(
                    "patch_mask given but this ViLBERT has no mask token; "
                    "build it with ViLBERT(config, mask_token=True)"
                )
            x = torch.where(patch_mask[..., None], self.mask_token.to(x.dtype), x)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        x = vit.norm(vit.blocks(x))  # (B, 1+P, Dv)
        return self.vision_proj(x)

    def fuse(
        self,
        text_states: torch.Tensor,
        attention_mask: torch.Tensor,
        vision_states: torch.Tensor,
        *,
        vision_rows: torch.Tensor | None = None,
        return_fusion_states: bool = False,
    ) -> ViLBERTOutput:
        """Fusion layers and poolers on projected tower outputs.

        ``vision_rows`` (N,) pairs text row i with image ``vision_rows[i]`` when the
        N text rows share fewer images (alignment prediction fuses each image with its
        caption and with a negative one). The vision stream then runs once per image
        through the self-attention layers before the first co-attention layer (they do
        not read the text) and is indexed out to N rows there, which saves those
        layers' vision cost on the repeated rows. ``vision_tower`` in the output keeps
        the unindexed states.
        """
        text, vision = text_states, vision_states
        states = []
        pending = vision_rows
        for layer in self.fusion:
            if pending is not None and layer.co_attention:
                vision, pending = vision[pending], None
            text, vision = layer(text, vision, attention_mask)
            if return_fusion_states:
                states.append((text, vision if pending is None else vision[pending]))
        if pending is not None:  # no co-attention layer at all
            vision = vision[pending]
        return ViLBERTOutput(
            text=text,
            vision=vision,
            text_pooled=self.text_pooler(text, attention_mask),
            vision_pooled=self.vision_pooler(vision),
            text_tower=text_states,
            vision_tower=vision_states,
            fusion_states=tuple(states) if return_fusion_states else None,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        *,
        patch_mask: torch.Tensor | None = None,
        return_fusion_states: bool = False,
    ) -> ViLBERTOutput:
        text = self.encode_text(input_ids, attention_mask)
        vision = self.encode_image(pixel_values, patch_mask)
        return self.fuse(text, attention_mask, vision, return_fusion_states=return_fusion_states)


def fusion_layer_kinds(config: ViLBERTConfig) -> Sequence[str]:
    """``"co-attention"`` or ``"self-attention"`` for each fusion layer."""
    return [
        "co-attention" if i in config.cross_attention_layers else "self-attention"
        for i in range(config.depth)
    ]
