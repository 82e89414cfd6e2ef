"""The one record every dataset yields, and the protocol datasets follow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One stimulus: an id that is stable across runs, a caption and/or an image.

    ``sample_id`` is the key every feature and score file is aligned on, so it
    must not depend on the order of loading or on which images were skipped.
    """

    sample_id: str
    text: str | None = None
    image: Image.Image | None = None
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@runtime_checkable
class SampleDataset(Protocol):
    """A finite, indexable collection of :class:`Sample`.

    ``skipped`` lists ``(sample_id, reason)`` for records that could not be
    read (missing or corrupt image); they are excluded from ``len()``.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    @property
    def skipped(self) -> Sequence[tuple[str, str]]: ...
