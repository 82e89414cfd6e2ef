"""Building a ``ModuleAdapter``'s model from the command line: a ``package.module:callable``
factory, called with keyword arguments (weights: :mod:`repalign.models.weights`)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

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
