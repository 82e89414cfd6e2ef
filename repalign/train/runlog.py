"""The run's metric log: ``RUN/log.jsonl`` (one JSON object per step and split) and
``RUN/log.csv`` (the training rows)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class RunLog:
    """Append-only ``log.jsonl``: one JSON object per (step, split)."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # False on DDP ranks other than 0: they read, never write

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a run resumes from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(f"{line}\n" for line in keep))

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]

    def write_csv(self, path: Path, split: str = "train") -> None:
        rows = [r for r in self.records() if r.get("split") == split]
        if not rows or not self.enabled:
            return
        columns = list(dict.fromkeys(k for r in rows for k in r))
        lines = [",".join(columns)]
        lines += [",".join("" if r.get(c) is None else str(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n")
