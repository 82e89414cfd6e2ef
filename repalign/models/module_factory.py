"""Building a ``ModuleAdapter``'s model from the command line: a ``package.module:callable``
factory, called with keyword arguments, and optional weights from a file."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def build_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``spec`` is ``package.module:callable`` (e.g. ``torchvision.models:resnet18``); the
    callable is called with ``kwargs`` and must return an ``nn.Module``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"model factory {spec!r} must look like package.module:callable, "
            "e.g. torchvision.models:resnet18"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model factory {spec!r}: cannot import {module_name!r} ({exc})") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"model factory {spec!r}: {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise ValueError(f"model factory {spec!r} is not callable")
    try:
        model = factory(**dict(kwargs or {}))
    except TypeError as exc:
        raise ValueError(
            f"model factory {spec!r} refused its arguments {dict(kwargs or {})}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model factory {spec!r} returned a {type(model).__name__}, not an nn.Module"
        )
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict from ``path`` into ``model`` (all keys must fit): a
    ``.safetensors`` file, or a torch file read with ``weights_only=True`` holding the
    state dict itself or under ``state_dict`` / ``model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors of many kinds: say what the file must be
            raise ValueError(
                f"cannot read weights from {path} with torch.load(weights_only=True): {exc}; "
                "give a state dict saved with torch.save or a .safetensors file"
            ) from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors)")
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights in {path} do not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
