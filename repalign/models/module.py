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
(see :mod:`repalign.extract.pooling`).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from repalign._suggest import did_you_mean
from repalign.data.base import Sample
from repalign.models.base import LAYOUTS, Adapter, LayerInfo, Layout, Stream, config_json
from repalign.models.hf import require_texts
from repalign.models.timm_vision import collate_images

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Collate = Callable[[Sequence[Sample]], Any]


def _glob_regex(pattern: str) -> str:
    """A module-path glob as a regex: ``*`` within a dotted component, ``**`` across."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif end != -1:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _path_regex(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"layer pattern {pattern!r} is not a valid regex: {exc}") from None
    return re.compile(_glob_regex(pattern))


def module_paths(model: nn.Module) -> list[str]:
    """Every submodule path of ``model`` in registration order (shared modules under each name)."""
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def resolve_module_paths(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The module paths matching ``patterns`` (see the module docstring), in pattern order
    and, within a pattern, in ``named_modules()`` order; each path once.

    A pattern that matches nothing is an error with the closest paths ("did you mean").
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("give at least one layer (a module path of the model, a glob or re:)")
    paths = module_paths(model)
    chosen: dict[str, None] = {}
    for pattern in patterns:
        regex = _path_regex(pattern)
        matched = [p for p in paths if regex.fullmatch(p)]
        if not matched:
            hint = did_you_mean(pattern.removeprefix("re:"), paths, cutoff=0.4)
            top = [name for name, _ in model.named_children()]
            shown = ", ".join(top[:12]) + (" ..." if len(top) > 12 else "")
            raise ValueError(
                f"layer {pattern!r} matches no submodule of {type(model).__name__}.{hint} "
                f"Its top-level modules: {shown}. `repalign.models.module.module_paths(model)` "
                "lists every path; '*' stays within one dotted component, '**' crosses them"
            )
        chosen.update(dict.fromkeys(matched))
    return list(chosen)


def image_transform(
    image_size: int | tuple[int, int] = 224,
    *,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Any], torch.Tensor]:
    """torchvision-style evaluation preprocessing: PIL image -> normalised ``(3, H, W)`` float.

    The shorter side is resized to ``resize`` (default: ``image_size``, bilinear,
    antialiased), the centre ``image_size`` crop kept, scaled to [0, 1] and normalised with
    ``mean``/``std`` (ImageNet's by default). torchvision's ImageNet classifiers were
    evaluated with ``image_size=224, resize=256``.
    """
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(resize or image_size, antialias=True),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


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


def _as_call(inputs: Any, who: str) -> dict[str, Any]:
    """Collated inputs as ``{"args": tuple, "kwargs": dict}`` (tensors stay nested inside)."""
    if isinstance(inputs, torch.Tensor):
        return {"args": (inputs,), "kwargs": {}}
    if isinstance(inputs, tuple | list):
        return {"args": tuple(inputs), "kwargs": {}}
    if isinstance(inputs, Mapping):
        return {"args": (), "kwargs": dict(inputs)}
    raise TypeError(
        f"{who}: collate must return a tensor (the model's one input), a tuple of positional "
        f"inputs or a dict of keyword inputs, got {type(inputs).__name__}"
    )


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
    description = "any nn.Module built in Python (ModuleAdapter(model, layers, stream=...))"

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | Mapping[str, str],
        *,
        stream: Stream,
        collate: Collate | None = None,
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
        self._layers = self._layer_infos(
            layers, stream, layout, cls_index, num_prefix_tokens, output_index, tokens
        )
        self._preprocessing: dict[str, Any] = {}
        self._collate = self._choose_collate(
            collate, transform, tokenizer, max_length, image_size, resize, mean, std
        )
        self.collate_thread_safe = collate_thread_safe if collate is not None else True  # type: ignore[misc]
        self._warned_no_mask = False
        self._checked_reuse = False

    # -- construction -------------------------------------------------------------------
    def _layer_infos(
        self,
        layers: Sequence[str] | Mapping[str, str],
        stream: Stream,
        layout: Layout | Mapping[str, Layout],
        cls_index: int | None,
        num_prefix_tokens: int,
        output_index: int,
        tokens: str | None,
    ) -> list[LayerInfo]:
        if isinstance(layers, Mapping):
            names = [str(k) for k in layers]
            paths = [str(v) for v in layers.values()]
            all_paths = set(module_paths(self.model))
            for canonical, path in zip(names, paths, strict=True):
                if path not in all_paths:
                    hint = did_you_mean(path, all_paths, cutoff=0.4)
                    raise ValueError(
                        f"layer {canonical!r}: {type(self.model).__name__} has no submodule "
                        f"{path!r}.{hint} `repalign.models.module.module_paths(model)` lists them"
                    )
            if len(set(paths)) != len(paths):
                raise ValueError(f"layers maps several names to one module path: {layers}")
        else:
            paths = resolve_module_paths(self.model, layers)
            names = [f"{stream}.{p}" for p in paths]
        layouts = self._layouts(layout, names, paths)
        n = len(paths)
        return [
            LayerInfo(
                canonical, path, stream, i + 1, (i + 1) / n,
                tokens=tokens,  # type: ignore[arg-type]
                cls_index=cls_index, num_prefix_tokens=num_prefix_tokens,
                output_index=output_index, layout=layouts[i],
            )
            for i, (canonical, path) in enumerate(zip(names, paths, strict=True))
        ]  # fmt: skip

    @staticmethod
    def _layouts(
        layout: Layout | Mapping[str, Layout], names: list[str], paths: list[str]
    ) -> list[Layout]:
        if isinstance(layout, str):
            return [layout] * len(paths)
        unknown = [k for k in layout if k not in names and k not in paths]
        if unknown:
            raise ValueError(
                f"layout given for {unknown}, which are not among the layers {paths}; key it "
                "by module path or canonical name"
            )
        default: Layout = "auto"
        out = [layout.get(p, layout.get(nm, default)) for nm, p in zip(names, paths, strict=True)]
        bad = [v for v in out if v not in LAYOUTS]
        if bad:
            raise ValueError(f"unknown layout {bad[0]!r}; choose one of {', '.join(LAYOUTS)}")
        return out

    def _choose_collate(
        self,
        collate: Collate | None,
        transform: Callable[[Any], torch.Tensor] | None,
        tokenizer: Any,
        max_length: int,
        image_size: int | tuple[int, int],
        resize: int | None,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> Callable[[Sequence[Sample]], dict[str, Any]]:
        who = self.name
        if collate is not None:
            self._preprocessing = {"collate": getattr(collate, "__qualname__", repr(collate))}
            return lambda samples: _as_call(collate(samples), who)
        if self.stream == "vision":
            if tokenizer is not None:
                raise ValueError(
                    f"{who}: a tokenizer is for stream='text'; a vision model reads images "
                    "(give transform=, image_size=/mean=/std=, or collate=)"
                )
            if transform is None:
                transform = image_transform(image_size, resize=resize, mean=mean, std=std)
                self._preprocessing = {
                    "image_size": image_size, "resize": resize or image_size,
                    "mean": list(mean), "std": list(std),
                }  # fmt: skip
            else:
                self._preprocessing = {"transform": repr(transform)}
            image_tf = transform
            return lambda samples: _as_call(collate_images(samples, image_tf, who), who)
        if self.stream == "text":
            if tokenizer is None:
                raise ValueError(
                    f"{who}: stream='text' needs tokenizer= (a transformers tokenizer) or "
                    "collate= (samples -> model inputs): samples hold captions as strings"
                )
            self._preprocessing = {
                "tokenizer": type(tokenizer).__name__,
                "tokenizer_source": str(getattr(tokenizer, "name_or_path", "")),
                "max_length": max_length,
            }
            return self._tokenizing_collate(tokenizer, max_length)
        raise ValueError(
            f"{who}: stream={self.stream!r} has no default preprocessing; give collate= "
            "(samples -> model inputs)"
        )

    def _tokenizing_collate(
        self, tokenizer: Any, max_length: int
    ) -> Callable[[Sequence[Sample]], dict[str, Any]]:
        params = inspect.signature(self.model.forward).parameters.values()
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        accepts = {p.name for p in params}
        lock = threading.Lock()  # fast tokenizers fail when called from several threads

        def collate(samples: Sequence[Sample]) -> dict[str, Any]:
            texts = require_texts(samples, self.name)
            with lock:
                enc = tokenizer(
                    texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt",
                )  # fmt: skip
            kwargs = {k: v for k, v in enc.items() if takes_any or k in accepts}
            return {"args": (), "kwargs": kwargs, "mask": enc.get("attention_mask")}

        return collate

    # -- the Adapter interface ----------------------------------------------------------
    @classmethod
    def load(
        cls,
        *,
        ckpt: str | None = None,
        text_model: str | None = None,
        vision_model: str | None = None,
        **options: Any,
    ) -> ModuleAdapter:
        raise TypeError(
            "ModuleAdapter wraps a model you have already built and cannot be loaded by name; "
            "construct it in Python: ModuleAdapter(model, ['layer1', ...], stream='vision')"
        )

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
        when extraction stops early and the last one's otherwise.

        A full pass with the extractor's own hooks on these modules set aside (they would
        record, or stop the pass early), counting calls with pre-hooks.
        """
        by_path = {
            info.module_path: self.model.get_submodule(info.module_path) for info in self._layers
        }
        modules = {id(m): m for m in by_path.values()}  # a module under two paths once
        calls: dict[int, int] = {}

        def count(module: nn.Module, _args: Any) -> None:
            calls[id(module)] = calls.get(id(module), 0) + 1

        saved = {key: m._forward_hooks for key, m in modules.items()}
        handles = []
        try:
            for m in modules.values():
                m._forward_hooks = OrderedDict()
                handles.append(m.register_forward_pre_hook(count))
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
