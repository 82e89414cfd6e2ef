"""Choosing layers of any ``nn.Module`` by module path, glob or regex (for ``ModuleAdapter``).

Patterns match paths of ``model.named_modules()``: ``*`` within one dotted component
(``blocks.*`` is every block, not every submodule of every block), ``**`` across
components, ``?`` and ``[...]`` one character (``[!...]`` negated), ``re:REGEX`` a full
regex; a plain path matches itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from repalign._patterns import match_each
from repalign._suggest import did_you_mean
from repalign.models.base import LayerInfo, Layout, Stream

_LISTING = "`repalign.models.module_layers.module_paths(model)` lists every path"


def module_paths(model: nn.Module) -> list[str]:
    """Every submodule path of ``model`` in registration order (a shared module under each
    of its names); the root module itself is not a layer."""
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def resolve_module_paths(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The module paths matching ``patterns``, in pattern order and, within a pattern, in
    ``named_modules()`` order; each path once.

    A pattern that matches nothing is an error with the closest paths ("did you mean").
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("give at least one layer (a module path of the model, a glob or re:)")
    paths = module_paths(model)
    hits = match_each(
        paths, patterns, dotted=True, what="submodule", where=type(model).__name__,
        shown=[name for name, _ in model.named_children()], shown_as="Its top-level modules",
        listing=f"{_LISTING}; '*' stays within one dotted component, '**' crosses them",
    )  # fmt: skip
    return list(dict.fromkeys(path for group in hits for path in group))


def _named_paths(
    model: nn.Module, layers: Sequence[str] | Mapping[str, str], stream: Stream
) -> tuple[list[str], list[str]]:
    """Canonical names and module paths: ``<stream>.<path>`` for patterns, or the mapping's."""
    if not isinstance(layers, Mapping):
        paths = resolve_module_paths(model, layers)
        return [f"{stream}.{p}" for p in paths], paths
    if not layers:
        raise ValueError("give at least one layer ({name: module path})")
    names, paths = [str(k) for k in layers], [str(v) for v in layers.values()]
    known = set(module_paths(model))
    for name, path in zip(names, paths, strict=True):
        if path not in known:
            hint = did_you_mean(path, known, cutoff=0.4)
            raise ValueError(
                f"layer {name!r}: {type(model).__name__} has no submodule {path!r}.{hint} "
                f"{_LISTING}"
            )
    if len(set(paths)) != len(paths):
        raise ValueError(f"layers maps several names to one module path: {dict(layers)}")
    return names, paths


def _layouts(
    layout: Layout | Mapping[str, Layout], names: list[str], paths: list[str]
) -> list[Layout]:
    """One layout per layer, from one value or a mapping keyed by path or name (else auto)."""
    if isinstance(layout, str):
        out = [layout] * len(paths)
    else:
        unknown = [k for k in layout if k not in names and k not in paths]
        if unknown:
            raise ValueError(
                f"layout given for {unknown}, which are not among the layers {paths}; key it "
                "by module path or canonical name"
            )
        auto: Layout = "auto"
        out = [layout.get(p, layout.get(n, auto)) for n, p in zip(names, paths, strict=True)]
    return out  # each value is checked by LayerInfo


def module_layers(
    model: nn.Module,
    layers: Sequence[str] | Mapping[str, str],
    *,
    stream: Stream,
    layout: Layout | Mapping[str, Layout] = "auto",
    cls_index: int | None = None,
    num_prefix_tokens: int = 0,
    output_index: int = 0,
    tokens: str | None = None,
) -> list[LayerInfo]:
    """:class:`LayerInfo` of the chosen submodules; depth = position in the list (1..L)."""
    names, paths = _named_paths(model, layers, stream)
    layouts = _layouts(layout, names, paths)
    n = len(paths)
    return [
        LayerInfo(
            name, path, stream, i + 1, (i + 1) / n,
            tokens=tokens,  # type: ignore[arg-type]
            cls_index=cls_index, num_prefix_tokens=num_prefix_tokens,
            output_index=output_index, layout=layouts[i],
        )
        for i, (name, path) in enumerate(zip(names, paths, strict=True))
    ]  # fmt: skip
