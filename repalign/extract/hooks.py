"""Record pooled layer outputs with forward hooks, and choose layers by name/glob/regex.

Usage::

    infos = select_layers(adapter.layers(), ["text.layer.*"])
    with record(adapter.model, infos, pool="mean") as rec:
        feats = rec.run(lambda: adapter.forward(batch), masks=adapter.token_masks(batch))
    # feats: {"text.layer.0": (B, D) tensor on the model's device, ...}

Hooks are removed when the ``with`` block ends, also on an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from repalign._patterns import select
from repalign.extract.pooling import Pooling, check_pooling, pool
from repalign.models.base import LayerInfo


class _StopForward(Exception):
    """Raised inside a hook once every requested layer has been recorded."""


def select_layers(
    available: Sequence[LayerInfo], patterns: Sequence[str] | None
) -> list[LayerInfo]:
    """The layers matching any of ``patterns`` (exact name, glob, or ``re:REGEX``), in forward order.

    ``None`` or an empty list selects every layer. A pattern that matches nothing is an
    error naming the closest layer names, so a typo never yields a silently empty file.
    """
    if not patterns:
        return list(available)
    names = [info.name for info in available]
    chosen = set(select(names, patterns, listing="`repalign layers MODEL` lists them all"))
    return [info for info in available if info.name in chosen]


def select_output(output: Any, info: LayerInfo) -> torch.Tensor:
    """The tensor of a module output that ``info`` records (``output_index`` of a tuple,
    list or mapping output); TypeError for an output holding no tensor there."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[info.output_index]
    if isinstance(output, Mapping):  # transformers ModelOutput and plain dicts
        return list(output.values())[info.output_index]
    raise TypeError(f"{info.name}: cannot take a tensor from a {type(output).__name__} output")


class Recorder:
    """Holds the hooks' results for one forward pass at a time (see :func:`record`)."""

    def __init__(
        self,
        layers: Sequence[LayerInfo],
        hooked: Sequence[LayerInfo],
        how: Pooling,
        stop_early: bool,
    ) -> None:
        self.layers = list(layers)  # what run() returns
        self.hooked = list(hooked)  # module layers with a hook: layers plus sources of derived ones
        self.how = how
        self.stop_early = stop_early
        self.masks: Mapping[str, torch.Tensor | None] = {}
        self._pooled: dict[str, torch.Tensor] = {}
        self._pending: set[str] = set()
        self._active = False  # hooks record only inside run()

    def _hook(self, infos: list[LayerInfo]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._active:
                return
            for info in infos:
                hidden = select_output(output, info)
                self._pooled[info.name] = pool(
                    hidden.detach(),
                    self.how,
                    mask=self.masks.get(info.tokens or "text"),
                    cls_index=info.cls_index,
                    num_prefix_tokens=info.num_prefix_tokens,
                    layer=info.name,
                    layout=info.layout,
                )
                self._pending.discard(info.name)
            if self.stop_early and not self._pending:
                raise _StopForward

        return hook

    def run(
        self, forward: Callable[[], Any], *, masks: Mapping[str, torch.Tensor | None] | None = None
    ) -> dict[str, torch.Tensor]:
        """Call ``forward()`` and return the pooled features of every selected layer.

        ``masks`` maps a token kind (``text``/``vision``) to its padding mask for this batch.
        """
        self.masks = masks or {}
        self._pooled = {}
        self._pending = {info.name for info in self.hooked}
        self._active = True
        try:
            forward()
        except _StopForward:
            pass
        finally:
            self._active = False
        missing = sorted(self._pending)
        if missing:
            raise RuntimeError(
                f"layers {', '.join(missing)} were not called during the forward pass; "
                "check their module paths (`repalign layers MODEL`)"
            )
        out: dict[str, torch.Tensor] = {}
        for info in self.layers:
            if info.is_derived:
                if self.how == "tokens":
                    raise ValueError(
                        f"{info.name} concatenates pooled features and has no token sequence; "
                        "use --pool cls or mean, or leave it out of --layers"
                    )
                out[info.name] = torch.cat([self._pooled[s] for s in info.sources], dim=-1)
            else:
                out[info.name] = self._pooled[info.name]
        self._pooled = {}
        return out


def _expand_sources(layers: Sequence[LayerInfo], available: Sequence[LayerInfo]) -> list[LayerInfo]:
    """Module layers to hook: the selected ones plus the sources of derived ones."""
    by_name = {info.name: info for info in available}
    hooked: dict[str, LayerInfo] = {}
    for info in layers:
        for name in info.sources or (info.name,):
            src = by_name.get(name, info if name == info.name else None)
            if src is None:
                raise ValueError(
                    f"{info.name} is built from {name!r}, which the model does not have"
                )
            hooked[name] = src
    return list(hooked.values())


@contextmanager
def record(
    model: nn.Module,
    layers: Sequence[LayerInfo],
    pool: Pooling | str = "mean",
    *,
    available: Sequence[LayerInfo] | None = None,
    stop_early: bool = False,
) -> Iterator[Recorder]:
    """Hook ``layers`` of ``model`` and pool their outputs; hooks are removed on exit.

    ``available`` (all the adapter's layers) is needed when a selected layer is derived
    from others (``sources``) that are not themselves selected. With ``stop_early`` the
    forward pass is cut short once the last needed layer has run (its output is unused).
    """
    how = check_pooling(pool)
    hooked = _expand_sources(layers, available if available is not None else layers)
    rec = Recorder(layers, hooked, how, stop_early)
    by_module: dict[str, list[LayerInfo]] = {}
    for info in hooked:
        by_module.setdefault(info.module_path, []).append(info)
    handles = []
    try:
        for path, infos in by_module.items():
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"layer {infos[0].name}: the model has no submodule {path!r}"
                ) from None
            handles.append(module.register_forward_hook(rec._hook(infos)))
        yield rec
    finally:
        for handle in handles:
            handle.remove()
