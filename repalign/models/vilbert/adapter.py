"""``vilbert``: the in-package ViLBERT, loaded from a repalign training checkpoint.

Layers, in forward order (``Lt``/``Lv`` tower blocks, ``D`` fusion layers):

=====================  ==========================  ======  ===============
name                   module (in ``ViLBERT``)     stream  depth
=====================  ==========================  ======  ===============
``text.embeddings``    ``text.embeddings``         text    0
``text.tower.N``       ``text.encoder.layer.N``    text    N+1
``text.fusion.N``      ``fusion.N`` (output 0)     text    Lt+N+1
``text.pooled``        ``text_pooler``             text    Lt+D
``vision.patch_embed`` ``vision.norm_pre``         vision  0
``vision.tower.N``     ``vision.blocks.N``         vision  N+1
``vision.fusion.N``    ``fusion.N`` (output 1)     vision  Lv+N+1
``vision.pooled``      ``vision_pooler``           vision  Lv+D
=====================  ==========================  ======  ===============

Fusion layers keep ViLBERT's two streams apart (each stream attends to the other
but has its own states), so ``text.fusion.N`` belongs to the text stream and
``vision.fusion.N`` to the vision stream; ``relative_depth`` is depth over
``Lt + D`` (text) or ``Lv + D`` (vision), so the towers fill [0, Lt/(Lt+D)] and the
fusion layers the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from repalign.data.base import Sample
from repalign.data.text_vocab import load_tokenizer
from repalign.models._registry import register_adapter
from repalign.models.base import Adapter, LayerInfo, config_json
from repalign.models.vilbert.config import ViLBERTConfig
from repalign.models.vilbert.model import ViLBERT
from repalign.models.vilbert.preprocess import ImageTransform, stack_images, tokenize
from repalign.provenance import sha256_of_path

log = logging.getLogger(__name__)


def vilbert_layers(model: ViLBERT) -> list[LayerInfo]:
    """Every extractable layer of ``model`` (see the module docstring)."""
    n_text = len(model.text.encoder.layer)
    n_vision = len(model.vision.blocks)
    depth = len(model.fusion)
    vit_prefix = int(model.vision.num_prefix_tokens)
    t_total, v_total = n_text + depth, n_vision + depth

    def text(name: str, path: str, d: int, **kw: Any) -> LayerInfo:
        return LayerInfo(name, path, "text", d, d / t_total if t_total else 0.0, **kw)

    def vision(name: str, path: str, d: int, **kw: Any) -> LayerInfo:
        return LayerInfo(
            name, path, "vision", d, d / v_total if v_total else 0.0,
            cls_index=0, num_prefix_tokens=vit_prefix, **kw,
        )  # fmt: skip

    layers = [text("text.embeddings", "text.embeddings", 0)]
    layers += [text(f"text.tower.{i}", f"text.encoder.layer.{i}", i + 1) for i in range(n_text)]
    layers += [
        text(f"text.fusion.{i}", f"fusion.{i}", n_text + i + 1, output_index=0)
        for i in range(depth)
    ]
    layers.append(text("text.pooled", "text_pooler", t_total))
    layers.append(vision("vision.patch_embed", "vision.norm_pre", 0))
    layers += [vision(f"vision.tower.{i}", f"vision.blocks.{i}", i + 1) for i in range(n_vision)]
    layers += [
        vision(f"vision.fusion.{i}", f"fusion.{i}", n_vision + i + 1, output_index=1)
        for i in range(depth)
    ]
    layers.append(vision("vision.pooled", "vision_pooler", v_total))
    return layers


def model_from_state(
    state_dict: Mapping[str, torch.Tensor], config: ViLBERTConfig, *, source: str = ""
) -> ViLBERT:
    """A :class:`ViLBERT` holding the ``vilbert.*`` weights of a PretrainModel or
    ClassifierModel state dict (plain ViLBERT keys are accepted too)."""
    prefixed = {k[len("vilbert.") :]: v for k, v in state_dict.items() if k.startswith("vilbert.")}
    own = prefixed or dict(state_dict)
    model = ViLBERT(config, mask_token="mask_token" in own, load_weights=False)
    missing, unexpected = model.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source or '(state dict)'} does not fit its ViLBERT config: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]} "
            f"({len(missing)} missing, {len(unexpected)} unexpected in all)"
        )
    return model.eval()


@register_adapter
class ViLBERTAdapter(Adapter):
    """A trained ViLBERT, its tokenizer and image preprocessing."""

    name = "vilbert"
    description = (
        "repalign's ViLBERT from a training checkpoint (--ckpt RUN/last); text.*, vision.*"
    )

    def __init__(
        self,
        model: ViLBERT,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = 32,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        source: str = "",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.source = source
        self.transform = ImageTransform(model.config.vision_image_size, mean, std)
        self._layers = vilbert_layers(model)

    @classmethod
    def load(
        cls,
        *,
        ckpt: str | None = None,
        text_model: str | None = None,
        vision_model: str | None = None,
        max_length: int = 32,
        **options: Any,
    ) -> ViLBERTAdapter:
        """Load ``ckpt``: a run directory (its ``last`` checkpoint) or a checkpoint
        directory written by ``repalign train``. ``text_model``/``vision_model`` are not
        used (the towers are in the checkpoint)."""
        if not ckpt:
            raise ValueError(
                "vilbert needs --ckpt PATH: a run directory or checkpoint written by "
                "`repalign train pretrain` (e.g. runs/pre/last)"
            )
        if text_model or vision_model:
            log.warning("vilbert reads its towers from --ckpt; --text-model/--vision-model ignored")
        if options:
            raise ValueError(f"vilbert does not take options {sorted(options)}")
        from repalign.train.checkpoint import load_model_weights

        state, run_config = load_model_weights(ckpt)
        model_dict = run_config.get("model", run_config)
        try:
            config = ViLBERTConfig.from_dict(model_dict)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{ckpt}: config.json has no usable ViLBERT config: {exc}") from None
        model = model_from_state(state, config, source=str(ckpt))
        tokenizer = load_tokenizer(run_config.get("tokenizer") or config.text_pretrained)
        return cls(model, tokenizer, max_length=max_length, source=str(ckpt))

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        enc = tokenize(self.tokenizer, [s.text for s in samples], max_length=self.max_length)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": stack_images([s.image for s in samples], self.transform, None),
        }

    def provenance(self) -> dict[str, str]:
        path = Path(self.source) if self.source else None
        return {
            "checkpoint": self.source,
            "checkpoint_sha256": sha256_of_path(path) if path is not None else "",
            "config_json": config_json(self.model.config),
        }
