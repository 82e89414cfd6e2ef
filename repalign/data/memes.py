"""Hateful Memes: a ``*.jsonl`` of ``{"id", "img", "label", "text"}`` lines plus an image
folder (``img`` is relative to the jsonl's folder, e.g. ``img/01235.png``). ``sample_id``
is the ``id`` field; ``label`` is absent on the unlabelled test split."""

from __future__ import annotations

import json
from pathlib import Path

from repalign.data.captions import ImageTextRecords, Record


def read_memes_jsonl(path: str | Path, images: str | Path | None = None) -> ImageTextRecords:
    path = Path(path)
    root = Path(images) if images is not None else path.parent
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read memes jsonl {path}: {exc}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sample_id, img, text = str(row["id"]), row["img"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}, line {lineno}: expected a JSON object with id, img, text (and label): {exc}"
            ) from None
        label = row.get("label")
        records.append(Record(sample_id, text, root / img, None if label is None else int(label)))
    return ImageTextRecords(records)
