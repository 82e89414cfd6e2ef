"""The ViLBERT configuration: a dataclass saved as JSON with every checkpoint."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from repalign.data.synthetic import VOCABULARY
from repalign.data.text_vocab import SPECIAL_TOKENS

# Tiny presets read the synthetic captions: "[CLS] a red circle left of a blue square [SEP]".
_SYNTHETIC_VOCAB_SIZE = len(dict.fromkeys((*SPECIAL_TOKENS, *VOCABULARY)))


@dataclass
class ViLBERTConfig:
    """Everything needed to rebuild a :class:`~repalign.models.vilbert.model.ViLBERT`.

    Attributes:
        text: BERT config kwargs (``vocab_size``, ``hidden_size``, ``num_hidden_layers``,
            ``num_attention_heads``, ``intermediate_size``, ...) for a randomly initialised
            text tower, or ``{"pretrained": PATH}`` for a local transformers directory.
        vision: timm ``VisionTransformer`` kwargs (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ...) for a random tower, or
            ``{"model": NAME, "weights": PATH | None}`` for a named timm architecture,
            optionally loaded from a local weights file (safetensors or a torch state dict).
        hidden_size: width of both streams inside the fusion layers; towers of another
            width are projected to it.
        num_heads: attention heads in the fusion layers.
        intermediate_size: feed-forward width in the fusion layers.
        depth: number of fusion layers on top of the towers (0 = towers only).
        cross_attention_layers: indices (0-based, < depth) of the co-attention layers;
            the other fusion layers are dual self-attention.
        dropout: hidden dropout in the fusion layers and heads.
        attention_dropout: dropout on attention probabilities, everywhere (towers too,
            for randomly initialised towers).
        freeze_text / freeze_vision: keep that tower's parameters fixed.
    """

    text: dict[str, Any]
    vision: dict[str, Any]
    hidden_size: int
    num_heads: int
    intermediate_size: int
    depth: int
    cross_attention_layers: list[int] = field(default_factory=list)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    freeze_text: bool = False
    freeze_vision: bool = False

    def __post_init__(self) -> None:
        self.cross_attention_layers = sorted(int(i) for i in self.cross_attention_layers)
        if self.depth < 0:
            raise ValueError(f"depth (fusion layers) must be >= 0, got {self.depth}")
        bad = [i for i in self.cross_attention_layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(
                f"cross_attention_layers {bad} out of range for depth={self.depth}; "
                f"use indices 0..{self.depth - 1}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        for name, p in (("dropout", self.dropout), ("attention_dropout", self.attention_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")

    @property
    def text_pretrained(self) -> str | None:
        """Local directory of a pretrained text tower, or ``None`` for random init."""
        return self.text.get("pretrained")

    @property
    def vision_weights(self) -> str | None:
        """Local weights file of the vision tower, or ``None`` for random init."""
        return self.vision.get("weights")

    @property
    def vision_patch_size(self) -> int:
        """Side of one image patch in pixels (collators need it to mask patches)."""
        if "patch_size" in self.vision:
            return int(self.vision["patch_size"])
        from repalign.models.vilbert.model import build_vision_tower

        return int(build_vision_tower(self, device="meta").patch_embed.patch_size[0])

    @property
    def vision_image_size(self) -> int:
        """Side of the input image in pixels."""
        if "img_size" in self.vision:
            return int(self.vision["img_size"])
        from repalign.models.vilbert.model import build_vision_tower

        return int(build_vision_tower(self, device="meta").patch_embed.img_size[0])

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViLBERTConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error (not silently lost)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown ViLBERTConfig keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**copy.deepcopy(d))


def _tiny() -> ViLBERTConfig:
    # Sized for CPU seconds per step. Patch 16 on 64x64 images (16 patches) rather than
    # patch 8 (64 patches): vision tokens dominate the cost, and at width 128 patch 8 was
    # ~20x slower per step; width 64 learns alignment faster per CPU second than 128.
    # Attention-probability dropout 0.1 everywhere (as DESIGN and the base preset), but no
    # hidden dropout: this model underfits the synthetic data, and hidden dropout cost ~5
    # points of held-out AP accuracy at 1200 steps (runs ap7 / ap16 in docs/vilbert.md).
    return ViLBERTConfig(
        text={
            "vocab_size": _SYNTHETIC_VOCAB_SIZE,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "max_position_embeddings": 32,
            "type_vocab_size": 1,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.1,
        },
        vision={
            "img_size": 64,
            "patch_size": 16,
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "attn_drop_rate": 0.1,
        },
        hidden_size=64,
        num_heads=4,
        intermediate_size=128,
        depth=3,
        cross_attention_layers=[0, 2],
        dropout=0.0,
        attention_dropout=0.1,
    )


def _base() -> ViLBERTConfig:
    return ViLBERTConfig(
        text={
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
            "attention_probs_dropout_prob": 0.1,
        },
        vision={"model": "vit_base_patch16_224", "weights": None, "attn_drop_rate": 0.1},
        hidden_size=768,
        num_heads=12,
        intermediate_size=3072,
        depth=4,
        cross_attention_layers=[1, 3],
    )


PRESETS = {"tiny": _tiny, "base": _base}


def preset(name: Literal["tiny", "base"], **overrides: Any) -> ViLBERTConfig:
    """A named configuration with fields replaced by ``overrides``.

    ``text`` and ``vision`` overrides are merged into the preset's dicts (so
    ``preset("tiny", vision={"depth": 4})`` keeps the other vision settings); a
    ``pretrained`` text or ``model`` vision override replaces the dict instead.
    """
    try:
        config = PRESETS[name]()
    except KeyError:
        raise ValueError(
            f"unknown ViLBERT preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None
    d = config.to_dict()
    for key, value in overrides.items():
        if key not in d:
            raise ValueError(f"unknown ViLBERTConfig field {key!r}; fields are {sorted(d)}")
        if key == "text" and "pretrained" not in value or key == "vision" and "model" not in value:
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return ViLBERTConfig.from_dict(d)
