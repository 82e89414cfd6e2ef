"""``timm-vision``: any timm ViT-style model (one with ``blocks``), random init or local weights.

Layers: ``vision.patch_embed`` (the token sequence entering block 0: patch
embeddings with class token and position embeddings, i.e. the output of
``norm_pre``; depth 0) and ``vision.block.N`` (output of block N, depth N+1, the
same tensors ``forward_intermediates(norm=False)`` returns). ``cls`` pooling takes
the class token; ``mean`` averages the patch tokens (class/register tokens skipped,
as timm's ``avg`` pool does). Preprocessing comes from the model's own data config.

There is no hub access here: models are created with ``pretrained=False`` and load
weights from a local file (``--ckpt``) or a timm-style directory (``config.json`` with
``architecture`` [+ ``model_args``] and ``model.safetensors``/``pytorch_model.bin``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repalign.data.base import Sample
from repalign.models._registry import register_adapter
from repalign.models.base import Adapter, LayerInfo, config_json
from repalign.provenance import sha256_of_path

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def vision_layers(model: nn.Module, prefix: str = "") -> list[LayerInfo]:
    """``vision.patch_embed`` + ``vision.block.N`` of a timm ViT-style model."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise ValueError(
            f"{type(model).__name__} has no `blocks` list; timm-vision supports ViT-style models "
            "(vit_*, deit_*, eva_*, ...)"
        )
    n = len(blocks)
    num_prefix = int(getattr(model, "num_prefix_tokens", 0))
    has_cls = getattr(model, "cls_token", None) is not None
    cls_index = 0 if has_cls else None
    layers = []
    if isinstance(getattr(model, "norm_pre", None), nn.Module):
        layers.append(
            LayerInfo(
                "vision.patch_embed", prefix + "norm_pre", "vision", 0, 0.0,
                cls_index=cls_index, num_prefix_tokens=num_prefix,
            )
        )  # fmt: skip
    elif isinstance(getattr(model, "patch_embed", None), nn.Module):
        layers.append(
            LayerInfo(
                "vision.patch_embed", prefix + "patch_embed", "vision", 0, 0.0, cls_index=None
            )
        )
    layers += [
        LayerInfo(
            f"vision.block.{i}", f"{prefix}blocks.{i}", "vision", i + 1, (i + 1) / n,
            cls_index=cls_index, num_prefix_tokens=num_prefix,
        )
        for i in range(n)
    ]  # fmt: skip
    return layers


def image_transform(model: nn.Module) -> Any:
    """The model's evaluation preprocessing (resize, crop, normalise) from its data config."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:  # a model built with img_size=... keeps the default cfg's 224
        cfg["input_size"] = (3, *tuple(img_size))
    return create_transform(**cfg, is_training=False)


def _load_weights(model: nn.Module, weights: str, name: str) -> None:
    """Load a weights file into ``model`` (not strict: a different head is fine), refusing a
    missing or unreadable file and one that shares no tensor name with the model (loading
    it would silently leave every weight random)."""
    import pickle

    from safetensors import SafetensorError
    from timm.models import load_checkpoint

    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"weights file {weights} does not exist or is not a file; --ckpt takes a "
            ".safetensors, .pth or .bin file"
        )
    try:
        incompatible = load_checkpoint(model, weights, strict=False)
    except RuntimeError as exc:  # load_state_dict: tensors of other shapes
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        shown = "; ".join(lines[1:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
        raise ValueError(
            f"{weights} does not fit timm model {name!r}: {shown}; is it the weights file of "
            "another model (or other --model-arg)?"
        ) from None
    except (KeyError, EOFError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
        raise ValueError(
            f"{weights} is not a readable weights file ({type(exc).__name__}: {exc}); --ckpt "
            "takes a .safetensors, .pth or .bin file of a timm model"
        ) from None
    if incompatible is not None and set(incompatible.missing_keys) >= set(model.state_dict()):
        raise ValueError(
            f"{weights} holds no weight of timm model {name!r} (none of its tensor names "
            "match the model's); is it the weights file of another model?"
        )


def create_timm_model(
    name_or_dir: str, weights: str | None = None, **options: Any
) -> tuple[nn.Module, str]:
    """Create a timm model without network access; returns it and the weights path used."""
    import timm

    path = Path(name_or_dir)
    model_args: dict[str, Any] = {}
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ValueError(
                f"{path} is a directory without config.json; it is not a timm model directory"
            )
        cfg = json.loads(cfg_file.read_text())
        name = cfg.get("architecture")
        if not name:
            raise ValueError(f"{cfg_file} has no 'architecture' key")
        model_args = dict(cfg.get("model_args", {}))
        if "num_classes" in cfg:
            model_args["num_classes"] = cfg["num_classes"]
        if isinstance(
            cfg.get("pretrained_cfg"), dict
        ):  # its mean/std/input size drive preprocessing
            model_args["pretrained_cfg_overlay"] = cfg["pretrained_cfg"]
        if weights is None:
            weights = next((str(path / f) for f in _WEIGHT_FILES if (path / f).exists()), None)
    else:
        name = name_or_dir
    model_args.update(options)
    try:
        model = timm.create_model(name, pretrained=False, **model_args)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ValueError(f"timm cannot create {name!r}: {exc}") from None
    if weights:
        _load_weights(model, weights, name)
    else:
        log.warning("timm model %s has random weights (no weights file given)", name)
    return model, weights or ""


@register_adapter
class TimmVisionAdapter(Adapter):
    """A timm ViT-style image encoder and its preprocessing."""

    name = "timm-vision"
    collate_thread_safe = True  # transforms are stateless
    description = (
        "any timm ViT-style model (name or local dir, optional weights file); vision.block.N"
    )

    def __init__(self, model: nn.Module, *, source: str = "", weights: str = "") -> None:
        self.model = model
        self.source = source
        self.weights = weights
        self.transform = image_transform(model)
        self._layers = vision_layers(model)

    @classmethod
    def load(
        cls,
        *,
        ckpt: str | None = None,
        text_model: str | None = None,
        vision_model: str | None = None,
        **options: Any,
    ) -> TimmVisionAdapter:
        """``vision_model``: a timm name or a timm-style directory; ``ckpt``: a weights file.

        Extra ``options`` go to ``timm.create_model`` (e.g. ``img_size=64``).
        """
        if not vision_model:
            raise ValueError(
                "timm-vision needs --vision-model NAME_OR_DIR (plus --ckpt WEIGHTS to load weights)"
            )
        if text_model:
            log.warning("timm-vision ignores --text-model %s", text_model)
        model, weights = create_timm_model(vision_model, ckpt, **options)
        return cls(model, source=vision_model, weights=weights)

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return {"pixel_values": collate_images(samples, self.transform, self.name)}

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model.forward_features(batch["pixel_values"])

    def token_masks(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        return {"vision": None}

    def provenance(self) -> dict[str, str]:
        cfg = {"source": self.source, "pretrained_cfg": getattr(self.model, "pretrained_cfg", {})}
        return {
            "checkpoint": self.weights or self.source,
            "checkpoint_sha256": sha256_of_path(self.weights) if self.weights else "",
            "config_json": config_json(cfg),
        }


def collate_images(samples: Sequence[Sample], transform: Any, who: str) -> torch.Tensor:
    missing = [s.sample_id for s in samples if s.image is None]
    if missing:
        raise ValueError(
            f"{who} needs an image for every sample; {len(missing)} have none (first: {missing[0]})"
        )
    return torch.stack([transform(s.image.convert("RGB")) for s in samples])  # type: ignore[union-attr]
