"""Parse a ``--data SPEC`` into a dataset.

SPEC is one of: ``path.tsv`` (captions + images), ``path.jsonl`` (Hateful Memes),
``path.json`` (COCO captions), ``synthetic`` or ``synthetic:N`` (the embedded
captioned shapes, ``N`` samples, default 512; ``synthetic:N:SEED`` picks a seed).
"""

from __future__ import annotations

from pathlib import Path

from repalign.data.base import SampleDataset

DEFAULT_SYNTHETIC_N = 512


def load_dataset(spec: str, *, images: str | Path | None = None) -> SampleDataset:
    """The dataset ``spec`` names; ``images`` overrides the image folder of file datasets."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from repalign.data.synthetic import SyntheticCaptions

        parts = spec.split(":")[1:]
        try:
            n = int(parts[0]) if parts and parts[0] else DEFAULT_SYNTHETIC_N
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise ValueError(
                f"bad synthetic spec {spec!r}: use synthetic, synthetic:N or synthetic:N:SEED"
            ) from None
        return SyntheticCaptions(n, seed=seed)
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
