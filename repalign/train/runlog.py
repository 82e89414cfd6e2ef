"""The run's metric log: ``RUN/log.jsonl`` (one JSON object per step and split) and
``RUN/log.csv`` (the training rows)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLog:
    """Append-only ``log.jsonl``: one JSON object per (step, split)."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # False on DDP ranks other than 0: they read, never write

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a run resumes from), and a
        last line cut short by a killed process."""
        if not self.enabled or not self.path.exists():
            return
        keep = [json.dumps(r) for r in self.records() if r.get("step", 0) <= step]
        self.path.write_text("".join(f"{line}\n" for line in keep))

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every record; a last line cut short (a run killed, or still writing) is skipped
        with a warning, a damaged line elsewhere is a ``ValueError`` naming it."""
        if not self.path.exists():
            return []
        lines = [(i, x) for i, x in enumerate(self.path.read_text().splitlines(), 1) if x.strip()]
        records = []
        for i, line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if i == lines[-1][0]:
                    log.warning(
                        "%s, line %d is incomplete; reading the lines before it", self.path, i
                    )
                    continue
                raise ValueError(
                    f"{self.path}, line {i} is not a JSON record ({exc}); the log is damaged"
                ) from None
        return records

    def write_csv(self, path: Path, split: str = "train") -> None:
        rows = [r for r in self.records() if r.get("split") == split]
        if not rows or not self.enabled:
            return
        columns = list(dict.fromkeys(k for r in rows for k in r))
        lines = [",".join(columns)]
        lines += [",".join("" if r.get(c) is None else str(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n")
