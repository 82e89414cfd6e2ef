"""Small stand-ins for the files the documented Python blocks read.

Each is what the docs' own commands would have produced, at toy size, built through
the library the commands call (a tiny untrained ViLBERT checkpoint, tiny random BERT
extractions of the embedded synthetic captions, ``compare`` on them). Built once per
test session into a cache folder and copied into each block's working directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from repalign.data.synthetic import SyntheticCaptions

#: samples in the stand-in feature files (the docs say 512; a few dozen show the same)
N_SAMPLES = 48
#: rows of the sharded stand-in: scaling.md reads rows 1000..1999 of it
N_SHARDED = 2048


def _run_ap(root: Path) -> Path:
    """``runs/ap``: the tiny preset, AP + ITC heads, untrained (``RUN/last`` only)."""
    from repalign.models.vilbert import preset
    from repalign.train.checkpoint import save_checkpoint
    from repalign.train.objectives import PretrainModel

    torch.manual_seed(0)
    config = preset("tiny")
    model = PretrainModel(config, tasks=["ap", "itc"]).eval()
    run = root / "runs" / "ap"
    run_config = {"kind": "pretrain", "model": config.to_dict(), "tokenizer": "synthetic"}
    save_checkpoint(run / "last", model, run_config)
    return run


def _extract(adapter, out: Path, n: int, **options) -> Path:
    from repalign.extract.run import extract

    data = SyntheticCaptions(n, seed=1)
    options = {"pool": "mean", "batch_size": 64, "progress": False, **options}
    extract(adapter, data, out, dataset_name=f"synthetic:{n}:1", **options)
    return out


def _vilbert_nc(root: Path) -> Path:
    """``vilbert.nc``: README's ``extract --model vilbert --layers 'text.*' --layers 'vision.*'``."""
    from repalign.models import get_adapter

    run = root / "runs" / "ap"
    adapter = get_adapter("vilbert").load(ckpt=str(run / "last"))
    return _extract(adapter, root / "vilbert.nc", N_SAMPLES, layers=["text.*", "vision.*"])


def _tiny_text_adapter(layers: int):
    from repalign.data.text_vocab import synthetic_tokenizer
    from repalign.models.hf import HFTextAdapter
    from tests.extract._tiny import tiny_bert

    tokenizer = synthetic_tokenizer()
    return HFTextAdapter(tiny_bert(len(tokenizer), layers), tokenizer, max_length=32)


def _text_nc(root: Path) -> Path:
    """``text.nc``: ``extract --model hf-text`` of a 6-layer tiny BERT (layers up to ``text.layer.5``)."""
    return _extract(_tiny_text_adapter(6), root / "text.nc", N_SAMPLES)


def _text_shards(root: Path) -> Path:
    """``text.shard{0..3}of4.nc``: a 12-layer tiny BERT extracted in 4 shards, as torchrun does."""
    adapter = _tiny_text_adapter(12)
    for k in range(4):
        _extract(adapter, root / f"text.shard{k}of4.nc", N_SHARDED, shard=f"{k}/4", batch_size=256)
    return root / "text.shard0of4.nc"


def _scores_nc(root: Path) -> Path:
    """``scores.nc``: ``compare vilbert.nc --layers-a 'text.*' --layers-b 'vision.*' -m cka -m mutual_knn``."""
    from repalign.compare import compare
    from repalign.store.scores import write_scores

    scores = compare(
        [root / "vilbert.nc"], ["cka", ("mutual_knn", {"k": 10})],
        layers_a=["text.*"], layers_b=["vision.*"],
    )  # fmt: skip
    return write_scores(scores, root / "scores.nc")


#: name a block mentions -> (builder, the stand-ins it needs first, the paths it leaves)
STAND_INS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], tuple[str, ...]]] = {
    "runs/ap": (_run_ap, (), ("runs",)),
    "vilbert.nc": (_vilbert_nc, ("runs/ap",), ("vilbert.nc",)),
    "text.nc": (_text_nc, (), ("text.nc",)),
    "text.shard*of4.nc": (_text_shards, (), tuple(f"text.shard{k}of4.nc" for k in range(4))),
    "scores.nc": (_scores_nc, ("vilbert.nc",), ("scores.nc",)),
}


class StandIns:
    """Builds each stand-in once (into ``cache``) and copies the ones a block needs."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._built: set[str] = set()

    def _build(self, name: str) -> None:
        if name in self._built:
            return
        builder, needs, _ = STAND_INS[name]
        for dep in needs:
            self._build(dep)
        builder(self.cache)
        self._built.add(name)

    def needed_by(self, source: str) -> list[str]:
        """The stand-ins whose names ``source`` mentions."""
        return [name for name in STAND_INS if name in source]

    def provide(self, source: str, workdir: Path) -> list[str]:
        """Copy into ``workdir`` every stand-in ``source`` mentions (and what they need)."""
        names = self.needed_by(source)
        todo: list[str] = []
        for name in names:
            todo += [*STAND_INS[name][1], name]
        for name in dict.fromkeys(todo):
            self._build(name)
            for rel in STAND_INS[name][2]:
                src, dst = self.cache / rel, workdir / rel
                if dst.exists():
                    continue
                if src.is_dir():
                    shutil.copytree(src, dst)
                else:
                    shutil.copy2(src, dst)
        return names
