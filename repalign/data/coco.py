"""COCO-captions-style JSON: ``images`` (``id``, ``file_name``) + ``annotations``
(``id``, ``image_id``, ``caption``). One sample per annotation; ``sample_id`` is the
annotation id. Images are relative to ``images`` (default: the JSON's folder)."""

from __future__ import annotations

import json
from pathlib import Path

from repalign.data.captions import ImageTextRecords, Record


def read_coco_captions(path: str | Path, images: str | Path | None = None) -> ImageTextRecords:
    path = Path(path)
    root = Path(images) if images is not None else path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read COCO captions JSON {path}: {exc}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(
            f"{path} is not COCO-captions style: it needs 'images' and 'annotations' lists"
        )
    files = {img["id"]: img["file_name"] for img in data["images"]}
    records = []
    for ann in data["annotations"]:
        try:
            file_name = files[ann["image_id"]]
        except KeyError:
            raise ValueError(
                f"{path}: annotation {ann.get('id')} refers to image_id {ann.get('image_id')}, "
                "which is not in 'images'"
            ) from None
        records.append(
            Record(
                str(ann["id"]), ann["caption"], root / file_name, meta={"image_id": ann["image_id"]}
            )
        )
    return ImageTextRecords(records)
