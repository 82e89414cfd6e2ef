"""``bert-vit``: the platonic-hypothesis baseline, a text and an image encoder side by side.

Both encoders see the same image-caption pairs; their layers keep their own names
(``text.layer.N``, ``vision.block.N``), and ``concat.layer.K`` is the per-depth
concatenation of the two pooled features ([text, vision]). When the towers differ
in depth, concat layer K pairs the text and vision blocks at the same relative
depth: text block ``round((K+1) * Lt / K_total) - 1`` with the analogous vision block,
where ``K_total = min(Lt, Lv)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repalign.data.base import Sample
from repalign.models._registry import register_adapter
from repalign.models.base import Adapter, LayerInfo, config_json
from repalign.models.hf import HFTextAdapter, text_layers
from repalign.models.timm_vision import TimmVisionAdapter, vision_layers

log = logging.getLogger(__name__)


def concat_layers(text: Sequence[LayerInfo], vision: Sequence[LayerInfo]) -> list[LayerInfo]:
    """``concat.layer.K`` over the blocks (depth >= 1) of two towers, paired by relative depth."""
    tb = [info for info in text if info.depth >= 1]
    vb = [info for info in vision if info.depth >= 1]
    k_total = min(len(tb), len(vb))
    out = []
    for k in range(k_total):
        t = tb[round((k + 1) * len(tb) / k_total) - 1]
        v = vb[round((k + 1) * len(vb) / k_total) - 1]
        out.append(
            LayerInfo(
                f"concat.layer.{k}", "", "fused", k + 1, (k + 1) / k_total,
                tokens="text", cls_index=None, sources=(t.name, v.name),
            )
        )  # fmt: skip
    return out


@register_adapter
class BertViTAdapter(Adapter):
    """A ``hf-text`` and a ``timm-vision`` adapter run on the same batch."""

    name = "bert-vit"
    collate_thread_safe = True  # both parts are
    description = (
        "text encoder + ViT side by side (platonic baseline); text.*, vision.*, concat.layer.N"
    )

    def __init__(self, text: HFTextAdapter, vision: TimmVisionAdapter) -> None:
        self.text, self.vision = text, vision
        self.model = nn.ModuleDict({"text": text.model, "vision": vision.model})
        t = text_layers(text.model, prefix="text.")
        v = vision_layers(vision.model, prefix="vision.")
        self._layers = [*t, *v, *concat_layers(t, v)]

    @classmethod
    def load(
        cls,
        *,
        ckpt: str | None = None,
        text_model: str | None = None,
        vision_model: str | None = None,
        max_length: int = 128,
        vision_weights: str | None = None,
        **options: Any,
    ) -> BertViTAdapter:
        """``--text-model`` (transformers dir/name) and ``--vision-model`` (timm name/dir), or
        ``--ckpt DIR`` holding ``text/`` and ``vision/`` subdirectories. Extra ``options`` go
        to ``timm.create_model``."""
        if ckpt and not (text_model or vision_model):
            root = Path(ckpt)
            if not (root / "text").is_dir() or not (root / "vision").is_dir():
                raise ValueError(
                    f"bert-vit --ckpt {ckpt} must be a directory with text/ and vision/ inside"
                )
            text_model, vision_model = str(root / "text"), str(root / "vision")
        elif ckpt and not vision_weights:
            vision_weights = ckpt
        if not text_model or not vision_model:
            raise ValueError(
                "bert-vit needs --text-model PATH_OR_NAME and --vision-model NAME_OR_PATH"
            )
        text = HFTextAdapter.load(text_model=text_model, max_length=max_length)
        vision = TimmVisionAdapter.load(vision_model=vision_model, ckpt=vision_weights, **options)
        return cls(text, vision)

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return {"text": self.text.collate(samples), "vision": self.vision.collate(samples)}

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.text.forward(batch["text"]), self.vision.forward(batch["vision"])

    def token_masks(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        return {"text": batch["text"].get("attention_mask"), "vision": None}

    def provenance(self) -> dict[str, str]:
        t, v = self.text.provenance(), self.vision.provenance()
        return {
            "checkpoint": f"text={t['checkpoint']};vision={v['checkpoint']}",
            "checkpoint_sha256": f"text={t['checkpoint_sha256']};vision={v['checkpoint_sha256']}",
            "config_json": config_json({"text": t["config_json"], "vision": v["config_json"]}),
        }
