"""The pretraining task names and the checks on task selections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from repalign.data.synthetic import COLOURS, SHAPES

TASKS: tuple[str, ...] = ("mlm", "mim", "ap", "itc")
# Tasks whose rows per batch ``task_batch_sizes`` can limit (ITC always uses the batch).
SIZED_TASKS: tuple[str, ...] = ("mlm", "mim", "ap")
# Words whose masked prediction needs the image: reported as mlm_attribute_accuracy.
ATTRIBUTE_WORDS: tuple[str, ...] = (*COLOURS, *SHAPES)


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Validate a task list (any non-empty subset of :data:`TASKS`), in canonical order."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(
            f"tasks must be a non-empty subset of {', '.join(TASKS)}; got {list(tasks)}"
        )
    return tuple(t for t in TASKS if t in tasks)


def check_task_batch_sizes(sizes: Mapping[str, int], tasks: Sequence[str]) -> dict[str, int]:
    """Validate ``task_batch_sizes``: selected tasks among :data:`SIZED_TASKS`, sizes >= 1."""
    wrong = sorted(t for t in sizes if t not in SIZED_TASKS or t not in tasks)
    if wrong:
        raise ValueError(
            f"task_batch_sizes for {wrong}: give sizes only for selected tasks among "
            f"{', '.join(SIZED_TASKS)} (ITC always uses the whole batch); selected: {list(tasks)}"
        )
    bad = {t: n for t, n in sizes.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"task_batch_sizes must be whole numbers >= 1, got {bad}")
    return dict(sizes)
