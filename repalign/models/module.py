"""``ModuleAdapter``: extract from any ``nn.Module`` built in Python, without writing an adapter.

Usage (a notebook)::

    from repalign.extract import extract
    from repalign.models import ModuleAdapter

    adapter = ModuleAdapter(resnet, ["layer1", "layer2", "layer3", "layer4"], stream="vision",
                            image_size=224, resize=256)       # or collate=..., transform=...
    extract(adapter, dataset, "resnet.nc", pool="mean")

Layers are module paths of ``model.named_modules()``, or patterns over them: ``*`` matches
within one dotted component (``blocks.*`` is every block, not every submodule of every
block), ``**`` across components, ``?`` and ``[...]`` one character, ``re:REGEX`` a full
regex. Canonical names are ``<stream>.<module path>`` unless ``layers`` is a mapping
``{name: module path}``; depth is the position in the list (1..L) and relative depth
``depth / L``, so list the layers in forward order.

A ``(B, C, H, W)`` output is read as ``channels_first`` (PyTorch's convention) by the
default ``layout="auto"``; a ``(B, H, W, C)`` one needs ``layout="channels_last"``
(see :mod:`repalign.extract.pooling`). Layer choice: :mod:`repalign.models.module_layers`;
samples to inputs: :mod:`repalign.models.module_inputs`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from repalign.data.base import Sample
from repalign.models._registry import register_adapter
from repalign.models.base import Adapter, LayerInfo, Layout, Stream, config_json
from repalign.models.module_inputs import IMAGENET_MEAN, IMAGENET_STD, default_collate
from repalign.models.module_layers import module_layers

log = logging.getLogger(__name__)


def state_sha256(model: nn.Module) -> str:
    """sha256 over the state dict: each tensor's name, dtype, shape and bytes, in order.

    Reads every parameter and buffer once (copied to the host if on an accelerator).
    """
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@register_adapter
class ModuleAdapter(Adapter):
    """Any ``nn.Module`` with the layers you name; see the module docstring.

    Args:
        model: the module; hooks attach to its submodules during extraction only.
        layers: module paths / globs / ``re:`` patterns, or ``{canonical name: module path}``.
        stream: ``vision``, ``text`` or ``fused``; prefixes canonical names and picks the
            default preprocessing.
        collate: ``samples -> inputs``; a tensor is the model's one positional input, a
            tuple its positional inputs, a dict its keyword inputs (``attention_mask`` in
            it is the text padding mask). Replaces the defaults below.
        transform: for ``vision`` without ``collate``: PIL image -> ``(3, H, W)`` tensor
            (e.g. ``torchvision`` weights' ``.transforms()``); default
            :func:`image_transform` of ``image_size``, ``resize``, ``mean``, ``std``.
        tokenizer: for ``text`` without ``collate``: a transformers tokenizer; captions are
            padded and truncated to ``max_length`` and inputs the model's ``forward`` does
            not name are dropped (the attention mask still masks the pooling).
        layout: how outputs are read, one value for all layers or ``{module path or name:
            layout}``; ``auto`` (default): ``(B, T, D)`` tokens, ``(B, C, H, W)`` channels-first.
        cls_index: position of a class token in ``(B, T, D)`` outputs; ``None``: ``cls``
            pooling is refused.
        num_prefix_tokens: leading non-content tokens ``mean`` skips (ViT class token).
        output_index: element of a tuple/dict output holding the features.
        tokens: for ``fused`` layers, whether outputs are ``text``- or ``vision``-shaped.
        call: ``call(model, *args, **kwargs)`` instead of ``model(*args, **kwargs)``
            (e.g. ``lambda m, x: m.forward_features(x)``).
        name: recorded as the file's ``model`` attr (default ``module:<class name>``).
        checkpoint: where the weights came from, recorded as is.
        fingerprint: record the sha256 of the weights (reads them once per extraction);
            ``resume`` then refuses a file written with other weights.
        collate_thread_safe: whether your ``collate`` may run in several threads at once.
    """

    name = "module"
    description = (
        "any nn.Module: ModuleAdapter(model, layers, stream=...) in Python, or "
        "--vision-model/--text-model package.module:callable"
    )

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | Mapping[str, str],
        *,
        stream: Stream,
        collate: Callable[[Sequence[Sample]], Any] | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        image_size: int | tuple[int, int] = 224,
        resize: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        tokenizer: Any = None,
        max_length: int = 128,
        layout: Layout | Mapping[str, Layout] = "auto",
        cls_index: int | None = None,
        num_prefix_tokens: int = 0,
        output_index: int = 0,
        tokens: str | None = None,
        call: Callable[..., Any] | None = None,
        name: str | None = None,
        checkpoint: str = "",
        fingerprint: bool = True,
        collate_thread_safe: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModuleAdapter wraps an nn.Module, got {type(model).__name__}")
        self.model = model
        self.stream = stream
        self.name = name or f"module:{type(model).__name__}"  # type: ignore[misc]
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self._call = call
        self._layers = module_layers(
            model, layers, stream=stream, layout=layout, cls_index=cls_index,
            num_prefix_tokens=num_prefix_tokens, output_index=output_index, tokens=tokens,
        )  # fmt: skip
        self._collate, self._preprocessing = default_collate(
            model, stream, self.name, collate=collate, transform=transform,
            tokenizer=tokenizer, max_length=max_length, image_size=image_size, resize=resize,
            mean=mean, std=std, custom_call=call is not None,
        )  # fmt: skip
        # the built-in collates are stateless or hold their own lock
        self.collate_thread_safe = collate_thread_safe if collate is not None else True  # type: ignore[misc]
        self._warned_no_mask = False
        self._checked_reuse = False

    # -- the Adapter interface ----------------------------------------------------------
    @classmethod
    def load(
        cls,
        *,
        ckpt: str | None = None,
        text_model: str | None = None,
        vision_model: str | None = None,
        layers: Sequence[str] | Mapping[str, str] | None = None,
        factory_args: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> ModuleAdapter:
        """From the command line: ``--vision-model package.module:callable`` (or
        ``--text-model``, which also sets the stream) builds the model, called with the
        ``factory_args`` mapping; ``--ckpt`` optionally holds its weights (a state dict,
        ``.safetensors`` or a torch file read with ``weights_only=True``). ``layers``
        defaults to every top-level submodule; other options go to the constructor
        (``image_size``, ``layout`` ...).

        ``repalign extract --model module --vision-model torchvision.models:resnet18
        --model-arg 'layers=["layer1","layer4"]' --model-arg image_size=64 ...``
        """
        from repalign.models.module_factory import build_from_factory
        from repalign.models.weights import load_weights

        if bool(text_model) == bool(vision_model):
            raise ValueError(
                "the module adapter needs one model factory, as --vision-model or --text-model "
                "package.module:callable (e.g. torchvision.models:resnet18); in Python, "
                "construct ModuleAdapter(model, layers, stream=...) directly"
            )
        stream: Stream = "text" if text_model else "vision"
        spec = str(text_model or vision_model)
        model = build_from_factory(spec, factory_args)
        if ckpt:
            load_weights(model, ckpt)
        if layers is None:
            layers = [name for name, _ in model.named_children()]
        options.setdefault("name", f"module:{spec}")
        return cls(model, layers, stream=stream, checkpoint=ckpt or "", **options)

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """``{"args": positional inputs, "kwargs": keyword inputs[, "mask": text padding]}``."""
        return self._collate(samples)

    def forward(self, batch: Mapping[str, Any]) -> Any:
        """Call the model (``call`` if given). The first call also checks, in one extra
        forward pass, that no hooked module runs more than once per pass."""
        if not self._checked_reuse:
            self._check_reuse(batch)
            self._checked_reuse = True
        return self._run(batch)

    def _run(self, batch: Mapping[str, Any]) -> Any:
        if self._call is not None:
            return self._call(self.model, *batch["args"], **batch["kwargs"])
        return self.model(*batch["args"], **batch["kwargs"])

    def _check_reuse(self, batch: Mapping[str, Any]) -> None:
        """Refuse a hooked module that runs several times in one pass (torchvision's
        BasicBlock calls its ``relu`` twice): its hook would keep the first call's output
        when extraction stops early and the last one's otherwise. Also log how each 4-D
        ``auto`` output is read, so a channels-last map read as channels-first shows.

        A full pass with the extractor's own hooks on these modules set aside (they would
        record, or stop the pass early), counting calls with pre-hooks.
        """
        by_path = {
            info.module_path: self.model.get_submodule(info.module_path) for info in self._layers
        }
        modules = {id(m): m for m in by_path.values()}  # a module under two paths once
        calls: dict[int, int] = {}
        shapes: dict[str, tuple[int, ...]] = {}  # first call's output shape, per layer

        def count(module: nn.Module, _args: Any) -> None:
            calls[id(module)] = calls.get(id(module), 0) + 1

        from repalign.extract.hooks import select_output

        def keep(module: nn.Module, _args: Any, output: Any) -> None:
            for info in self._layers:
                if by_path[info.module_path] is module and info.name not in shapes:
                    try:
                        out = select_output(output, info)
                    except (TypeError, IndexError):  # the extraction run reports it
                        continue
                    if isinstance(out, torch.Tensor):
                        shapes[info.name] = tuple(out.shape)

        saved = {key: m._forward_hooks for key, m in modules.items()}
        handles = []
        try:
            for m in modules.values():
                m._forward_hooks = OrderedDict()  # set aside; restored below
                handles.append(m.register_forward_pre_hook(count))
                handles.append(m.register_forward_hook(keep))
            self._run(batch)
        finally:
            for handle in handles:
                handle.remove()
            for key, m in modules.items():
                m._forward_hooks = saved[key]
        reused = [(p, calls[id(m)]) for p, m in by_path.items() if calls.get(id(m), 0) > 1]
        if reused:
            path, n = reused[0]
            raise ValueError(
                f"module {path!r} runs {n} times in one forward pass (the model reuses it, as "
                "torchvision's BasicBlock reuses `relu`), so which call to record is ambiguous; "
                "choose a module that runs once, e.g. the enclosing block"
            )
        for info in self._layers:
            shape = shapes.get(info.name, ())
            if info.layout == "auto" and len(shape) >= 4:
                log.info(
                    "%s: output %s read as (batch, channels, *spatial): %d channels (layout "
                    "auto); pass layout='channels_last' if it is (batch, *spatial, channels)",
                    info.name, shape, shape[1],
                )  # fmt: skip

    def token_masks(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor | None]:
        mask = batch.get("mask")
        if mask is None:
            mask = batch["kwargs"].get("attention_mask")
        if mask is None and self.stream == "text" and not self._warned_no_mask:
            self._warned_no_mask = True
            log.warning(
                "%s: the text inputs carry no attention_mask, so mean pooling averages every "
                "position, padding included; return one from collate (a dict with "
                "'attention_mask') to mask it",
                self.name,
            )
        return {"text": mask, "vision": None}

    def provenance(self) -> dict[str, str]:
        """Model class, parameter count, layers and preprocessing; the weights' sha256
        (:func:`state_sha256`) unless ``fingerprint=False``."""
        cls = type(self.model)
        config = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "stream": self.stream,
            "layers": [
                {"name": i.name, "module_path": i.module_path, "layout": i.layout}
                for i in self._layers
            ],
            "preprocessing": self._preprocessing,
        }
        return {
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": state_sha256(self.model) if self.fingerprint else "",
            "config_json": config_json(config),
        }
