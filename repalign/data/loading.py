"""Parse a ``--data SPEC`` into a dataset.

SPEC is one of: ``path.tsv`` (captions + images), ``path.jsonl`` (Hateful Memes),
``path.json`` (COCO captions), ``synthetic`` or ``synthetic:N`` (the embedded
captioned shapes, ``N`` samples, default 512; ``synthetic:N:SEED`` picks a seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from repalign.data.base import SampleDataset

DEFAULT_SYNTHETIC_N = 512


class SyntheticSpec(NamedTuple):
    """``synthetic[:N[:SEED]]``: N samples and the seed (None where the spec leaves them out)."""

    n: int | None
    seed: int | None


def parse_synthetic(spec: str) -> SyntheticSpec | None:
    """The parts of a ``synthetic[:N[:SEED]]`` spec, or None when ``spec`` names other data.

    Raises ValueError on a malformed one (``synthetic:abc``, ``synthetic:8:1:2``).
    """
    if spec != "synthetic" and not spec.startswith("synthetic:"):
        return None
    parts = spec.split(":")[1:]
    n_ok = not parts or parts[0] == "" or parts[0].isdigit()
    if len(parts) > 2 or not n_ok or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(
            f"bad synthetic spec {spec!r}: use synthetic, synthetic:N or synthetic:N:SEED "
            "(whole numbers, e.g. synthetic:512 or synthetic:512:1)"
        )
    n = int(parts[0]) if parts and parts[0] else None
    return SyntheticSpec(n, int(parts[1]) if len(parts) > 1 else None)


def load_dataset(
    spec: str, *, images: str | Path | None = None, image_size: int | None = None
) -> SampleDataset:
    """The dataset ``spec`` names; ``images`` overrides the image folder of file datasets,
    ``image_size`` the side of synthetic images (file datasets keep their images)."""
    synthetic = parse_synthetic(spec)
    if synthetic is not None:
        from repalign.data.synthetic import SyntheticCaptions

        n = DEFAULT_SYNTHETIC_N if synthetic.n is None else synthetic.n
        size = {} if image_size is None else {"image_size": image_size}
        return SyntheticCaptions(n, seed=synthetic.seed or 0, **size)
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"data file {spec!r} does not exist; --data takes a .tsv, .jsonl or COCO .json file, "
            "or 'synthetic[:N]'"
        )
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        from repalign.data.captions import read_captions_tsv

        return read_captions_tsv(path, images)
    if suffix == ".jsonl":
        from repalign.data.memes import read_memes_jsonl

        return read_memes_jsonl(path, images)
    if suffix == ".json":
        from repalign.data.coco import read_coco_captions

        return read_coco_captions(path, images)
    raise ValueError(
        f"cannot tell the format of {spec!r} from its extension {suffix!r}: "
        "use .tsv (captions), .jsonl (Hateful Memes), .json (COCO captions) or 'synthetic[:N]'"
    )
