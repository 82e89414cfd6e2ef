"""The adapter interface: how repalign loads a model, lists its layers and feeds it samples.

An :class:`Adapter` wraps one ``nn.Module`` and tells the extractor three things:

* which layers exist (:meth:`Adapter.layers` -> :class:`LayerInfo`), each with a
  canonical name (``text.layer.5``), the module path a forward hook attaches to,
  its stream and depth;
* how a list of :class:`~repalign.data.base.Sample` becomes model inputs
  (:meth:`Adapter.collate`) and how the model is called (:meth:`Adapter.forward`);
* which token mask applies to which layer: every layer's output is shaped like
  one token sequence, named by :attr:`LayerInfo.tokens` (``"text"`` or
  ``"vision"``), and :meth:`Adapter.token_masks` returns the padding mask of each
  sequence for a batch (``None`` when no position is padding). A fused layer of a
  two-stream model is text- or vision-shaped, so it says which one.

Layers whose output is a tuple (e.g. a co-attention block returning
``(text, vision)``) pick an element with :attr:`LayerInfo.output_index`. Layers
that are not a module but the concatenation of other layers' pooled features
(the ``bert-vit`` baseline's ``concat.layer.N``) list those in
:attr:`LayerInfo.sources`.

A layer's output is read as a token sequence ``(B, T, D)`` unless its
:attr:`LayerInfo.layout` says it is a feature map: ``channels_first`` ``(B, C, H, W)``
(``nn.Conv2d``'s), ``channels_last`` ``(B, H, W, C)``, or ``auto`` (by rank: 4-D and
more is ``channels_first``); see :mod:`repalign.extract.pooling`.

Depth convention: ``depth`` counts the blocks applied to reach the layer's
output in its own stream (embeddings 0, ``text.layer.0`` 1, ...), and
``relative_depth`` is ``depth / number of blocks`` in [0, 1].
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from repalign.data.base import Sample

Stream = Literal["text", "vision", "fused"]
TokenKind = Literal["text", "vision"]
Layout = Literal["tokens", "channels_first", "channels_last", "auto"]
LAYOUTS: tuple[str, ...] = ("tokens", "channels_first", "channels_last", "auto")


@dataclass(frozen=True)
class LayerInfo:
    """One extractable layer.

    Attributes:
        name: canonical name, used as the feature variable name (``vision.block.11``).
        module_path: dotted path of the hooked module inside ``Adapter.model``
            (as in ``model.get_submodule``); empty for layers with ``sources``.
        stream: ``text``, ``vision`` or ``fused``.
        depth: blocks applied in this layer's stream to reach its output (embeddings = 0).
        relative_depth: ``depth`` divided by the stream's number of blocks, in [0, 1].
        tokens: which token sequence the output is shaped like; selects the padding
            mask from :meth:`Adapter.token_masks`. Defaults to ``stream`` unless fused.
        cls_index: position of the [CLS]/class token, or ``None`` if there is none
            (then ``cls`` pooling is refused for this layer).
        num_prefix_tokens: leading tokens that are not content (class and register
            tokens of a ViT); ``mean`` pooling skips them. Text layers keep 0: their
            mean runs over every non-padding token, [CLS] and [SEP] included, as
            sentence-transformers does.
        output_index: element of a tuple/list output holding this layer's tensor.
        sources: for derived layers, the names of the layers whose pooled features
            are concatenated (in order) to form this one.
        layout: how the output is read: ``tokens`` ``(B, T, D)`` (the default),
            ``channels_first`` ``(B, C, *spatial)`` (conv feature maps),
            ``channels_last`` ``(B, *spatial, C)``, or ``auto`` (``(B, T, D)`` at rank
            3, ``channels_first`` at rank 4 and more).
    """

    name: str
    module_path: str
    stream: Stream
    depth: int
    relative_depth: float
    tokens: TokenKind | None = None
    cls_index: int | None = 0
    num_prefix_tokens: int = 0
    output_index: int = 0
    sources: tuple[str, ...] = ()
    layout: Layout = "tokens"

    def __post_init__(self) -> None:
        if self.stream not in ("text", "vision", "fused"):
            raise ValueError(
                f"layer {self.name!r}: stream must be text, vision or fused, got {self.stream!r}"
            )
        if self.tokens is None:
            if self.stream == "fused" and not self.sources:
                raise ValueError(
                    f"fused layer {self.name!r} must say whether its output is text- or "
                    "vision-shaped: pass tokens='text' or tokens='vision'"
                )
            object.__setattr__(self, "tokens", "text" if self.stream == "fused" else self.stream)
        if not 0.0 <= self.relative_depth <= 1.0:
            raise ValueError(
                f"layer {self.name!r}: relative_depth must be in [0, 1], got {self.relative_depth}"
            )
        if not self.module_path and not self.sources:
            raise ValueError(f"layer {self.name!r} needs a module_path or sources")
        if self.layout not in LAYOUTS:
            raise ValueError(
                f"layer {self.name!r}: layout must be one of {', '.join(LAYOUTS)}, got "
                f"{self.layout!r} (channels_first = (batch, channels, height, width), as "
                "nn.Conv2d returns)"
            )
        if self.layout in ("channels_first", "channels_last") and self.num_prefix_tokens:
            raise ValueError(
                f"layer {self.name!r}: a {self.layout} feature map has no prefix tokens; "
                "leave num_prefix_tokens at 0"
            )

    @property
    def is_derived(self) -> bool:
        return bool(self.sources)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Adapter(ABC):
    """A model plus everything the extractor needs to run it and name its layers.

    Subclasses set :attr:`name`, assign :attr:`model` in ``__init__`` (which takes
    already-built objects, so tests can wrap tiny random models), and implement
    :meth:`load` (build from a checkpoint, local directory or library name),
    :meth:`layers` and :meth:`collate`. Register with
    :func:`repalign.models.register_adapter`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True if :meth:`collate` may run in several threads at once. The extractor loads
    #: samples (image decoding) in worker threads either way; when False it serialises
    #: collate calls (fast tokenizers, e.g., fail when called concurrently).
    collate_thread_safe: ClassVar[bool] = False
    model: nn.Module

    @classmethod
    @abstractmethod
    def load(
        cls,
        *,
        ckpt: str | None = None,
        text_model: str | None = None,
        vision_model: str | None = None,
        **options: Any,
    ) -> Adapter:
        """Build the adapter from a repalign checkpoint, a local directory or a library name.

        Each adapter documents which of ``ckpt``, ``text_model`` and ``vision_model``
        it reads; it raises ``ValueError`` naming the missing one otherwise.
        """

    @abstractmethod
    def layers(self) -> list[LayerInfo]:
        """Every extractable layer, in forward order."""

    @abstractmethod
    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Turn samples into model inputs (tensors on the CPU, float32 pixels).

        Text inputs must include ``attention_mask`` (1 = real token, 0 = padding).
        """

    def forward(self, batch: Mapping[str, Any]) -> Any:
        """Run the model on a collated batch (already on the model's device)."""
        return self.model(**batch)

    def token_masks(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor | None]:
        """Padding mask per token sequence (``(B, T)``, nonzero = real token).

        The default reads the text mask from ``batch["attention_mask"]`` and assumes
        vision tokens are never padded.
        """
        return {"text": batch.get("attention_mask"), "vision": None}

    def provenance(self) -> dict[str, str]:
        """What the feature file records about the model: ``checkpoint``,
        ``checkpoint_sha256`` and ``config_json`` (strings; empty when unknown)."""
        return {"checkpoint": "", "checkpoint_sha256": "", "config_json": "{}"}

    def layer(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` called ``name``."""
        for info in self.layers():
            if info.name == name:
                return info
        raise KeyError(f"{self.name} has no layer {name!r}")

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Adapter:
        """Move the model to ``device`` (and cast its floating parameters to ``dtype``)."""
        self.model.to(device=device, dtype=dtype)
        return self


def config_json(config: Any) -> str:
    """A config (dict or object with ``to_dict``) as deterministic JSON; ``{}`` if unknown."""
    if config is None:
        return "{}"
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.dumps(config, sort_keys=True, default=str)
