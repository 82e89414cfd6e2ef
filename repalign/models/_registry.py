"""Adapters by name: built-ins register on import, user packages through entry points.

A user's package adds an adapter without touching repalign by declaring, in its
``pyproject.toml``::

    [project.entry-points."repalign.adapters"]
    my-model = "my_package.adapter:MyAdapter"

The entry point's name is the adapter name; it must load an :class:`Adapter` subclass.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import TypeVar

from repalign._suggest import did_you_mean
from repalign.models.base import Adapter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "repalign.adapters"
# Modules whose import registers the built-in adapters; imported lazily so that
# `repalign --help` does not pay for importing transformers and timm.
_BUILTIN_MODULES: tuple[str, ...] = (
    "repalign.models.hf",
    "repalign.models.timm_vision",
    "repalign.models.bert_vit",
    "repalign.models.vilbert.adapter",
    "repalign.models.module",
)

_ADAPTERS: dict[str, type[Adapter]] = {}
_discovered = False

A = TypeVar("A", bound=type[Adapter])


def register_adapter(cls: A) -> A:
    """Class decorator: make ``cls`` available as ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name` (a non-empty string)")
    existing = _ADAPTERS.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"adapter name {name!r} is taken by {existing.__module__}.{existing.__qualname__}; "
            "choose another name"
        )
    _ADAPTERS[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a missing adapter module itself is tolerated (e.g. a part not built
            # yet); a missing dependency inside it is a real error worth reporting.
            if exc.name is not None and module.startswith(exc.name):
                log.debug("built-in adapter module %s not present", module)
                continue
            raise
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _ADAPTERS:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plug-in must not break every other adapter
            log.warning("could not load adapter %r from entry point %s: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            log.warning(
                "entry point %r (%s) is not an Adapter subclass; ignored", ep.name, ep.value
            )
            continue
        _ADAPTERS[ep.name] = cls


def list_adapters() -> list[str]:
    """Names of every registered adapter, sorted."""
    _discover()
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> type[Adapter]:
    """The adapter class called ``name``; a clear error with suggestions otherwise."""
    _discover()
    try:
        return _ADAPTERS[name]
    except KeyError:
        hint = did_you_mean(name, _ADAPTERS)
        raise KeyError(
            f"unknown model adapter {name!r}.{hint} Available: {', '.join(sorted(_ADAPTERS))}"
        ) from None


def _reset_for_tests() -> None:
    """Forget entry-point discovery (tests that fake entry points call this)."""
    global _discovered
    _discovered = False
