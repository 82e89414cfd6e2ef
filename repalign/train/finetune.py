"""Fine-tuning ViLBERT on a binary image-text task (Hateful-Memes-style).

Data: a memes ``*.jsonl`` (``{"id", "img", "label", "text"}``) with ``data.eval_path``
as the dev split and optionally ``data.test_path``; or ``synthetic-binary``:
does the caption describe the image? Half the samples carry their true caption
(label 1), half a hard negative with one colour, shape or relation swapped
(label 0), on scenes and images disjoint from pretraining's seeds.

The run evaluates accuracy and AUROC on dev every ``loop.eval_every`` steps,
keeps the best-AUROC weights in ``RUN/best`` and stops after ``patience``
evaluations without improvement. ``RUN/eval.json`` holds ``accuracy`` and
``auroc`` of the best weights on test (dev when there is no labelled test),
plus ``dev_*`` and ``test_*``. ``from_scratch=true`` trains the same
architecture from random weights: the no-pretraining baseline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repalign.data.base import Sample
from repalign.distributed import is_main_process
from repalign.train.batches import BatchStream
from repalign.train.checkpoint import load_model_weights
from repalign.train.config import DataConfig, FinetuneConfig, to_dict
from repalign.train.data import EVAL_SEED_OFFSET, TEST_SEED_OFFSET, eval_batches, model_device
from repalign.train.loop import Periodic, Trainer, start_run

log = logging.getLogger(__name__)

# Fine-tuning scenes use seeds far from any pretraining seed.
FINETUNE_SEED_OFFSET = 500_009


class SyntheticMatching(Sequence[Sample]):
    """``n`` synthetic images, each with its true caption (label 1) or a hard negative (0)."""

    def __init__(self, n: int, *, seed: int = 0, image_size: int = 64) -> None:
        from repalign.data.synthetic import SyntheticCaptions

        self.scenes = SyntheticCaptions(n, seed=seed, image_size=image_size)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index):  # type: ignore[override]
        from repalign.data.synthetic import hard_negative

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        sample = self.scenes[index]
        rng = np.random.default_rng([self.seed, index, 1])
        label = int(rng.integers(0, 2))
        scene = sample.meta["scene"]
        text = scene.caption if label else hard_negative(scene, rng).caption
        return Sample(sample.sample_id, text, sample.image, label, {"index": index})

    @property
    def skipped(self) -> Sequence[tuple[str, str]]:
        return ()


def finetuning_data(data: DataConfig) -> dict[str, Sequence[Sample]]:
    """``{"train", "dev"[, "test"]}`` labelled samples."""
    if data.name == "synthetic-binary":
        seed, size = data.seed + FINETUNE_SEED_OFFSET, data.image_size
        return {
            "train": SyntheticMatching(data.n_train, seed=seed, image_size=size),
            "dev": SyntheticMatching(data.n_eval, seed=seed + EVAL_SEED_OFFSET, image_size=size),
            "test": SyntheticMatching(data.n_eval, seed=seed + TEST_SEED_OFFSET, image_size=size),
        }
    from repalign.data.loading import load_dataset

    if data.name.startswith("synthetic"):
        raise ValueError(
            f"fine-tuning data {data.name!r} is unknown: use synthetic-binary, or a train .jsonl "
            "with data.eval_path=dev.jsonl"
        )
    if not Path(data.name).is_file():
        raise FileNotFoundError(
            f"fine-tuning data {data.name!r} is not a file; --data takes synthetic-binary "
            "or a train .jsonl (with data.eval_path=dev.jsonl)"
        )
    if data.eval_path is None:
        raise ValueError(
            "fine-tuning on a file needs a dev split: set data.eval_path=dev.jsonl "
            "(and optionally data.test_path=test.jsonl)"
        )
    splits = {
        "train": load_dataset(data.name, images=data.images),
        "dev": load_dataset(data.eval_path, images=data.images),
    }
    if data.test_path is not None:
        splits["test"] = load_dataset(data.test_path, images=data.images)
    return splits


def classification_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy (threshold 0 on logits) and AUROC; AUROC is NaN with a single class."""
    from sklearn.metrics import roc_auc_score

    accuracy = float(((logits > 0).astype(int) == labels.astype(int)).mean())
    if len(np.unique(labels)) < 2:
        log.warning("only one class among %d labels: AUROC is undefined", len(labels))
        return {"accuracy": accuracy, "auroc": float("nan")}
    return {"accuracy": accuracy, "auroc": float(roc_auc_score(labels, logits))}


def predict(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    device = model_device(model)
    logits, labels = [], []
    for batch in batches:
        out = model({k: v.to(device, non_blocking=True) for k, v in batch.items()})
        logits.append(out["logits"].float().cpu())
        labels.append(batch["labels"])
    return classification_scores(torch.cat(logits).numpy(), torch.cat(labels).numpy())


def _labelled(split: Sequence[Sample]) -> bool:
    return len(split) > 0 and split[0].label is not None


def build(config: FinetuneConfig) -> dict[str, Any]:
    """Model (pretrained or not), collators and splits of a fine-tuning run."""
    from repalign.data.text_vocab import load_tokenizer
    from repalign.models.vilbert import ViLBERTConfig, preset
    from repalign.train.collate import ClassifierCollator
    from repalign.train.objectives import ClassifierModel

    state = None
    if config.init is not None:
        state, saved = load_model_weights(config.init)
        if "model" not in saved:
            raise ValueError(
                f"{config.init} has no model config in config.json; is it a ViLBERT run?"
            )
        vconfig = ViLBERTConfig.from_dict(saved["model"])
        tokenizer_source = saved.get("tokenizer", "synthetic")
    else:
        if not config.from_scratch:
            log.warning("no init checkpoint given: fine-tuning from random weights")
        vconfig = preset(config.preset, **config.model)
        tokenizer_source = vconfig.text_pretrained or "synthetic"
    model = ClassifierModel(vconfig)
    if state is not None and not config.from_scratch:
        model.load_pretrained(state)
        log.info("initialised from the pretrained weights in %s", config.init)
    tokenizer = load_tokenizer(tokenizer_source)
    image_size = vconfig.vision_image_size
    seed = config.loop.seed
    # no augmentation in fine-tuning, so one collator serves training and evaluation
    collate = ClassifierCollator(tokenizer, image_size=image_size, augment=False, seed=seed)
    return {
        "model": model,
        "vconfig": vconfig,
        "tokenizer": tokenizer_source,
        "train_collate": collate,
        "eval_collate": collate,
        "splits": finetuning_data(config.data),
    }


def run_finetuning(config: FinetuneConfig, *, resume: bool = False) -> dict[str, float]:
    """Fine-tune, evaluate the best weights on dev and test, write ``RUN/eval.json``."""
    out = start_run(config, resume=resume)
    parts = build(config)
    model, splits = parts["model"], parts["splits"]
    seed = config.loop.seed
    evaluation = {
        name: eval_batches(split, config.batch_size, parts["eval_collate"], seed)
        for name, split in splits.items()
        if name != "train" and _labelled(split)
    }
    if "dev" not in evaluation:
        n_dev = len(splits["dev"])
        raise ValueError(
            f"the dev split ({config.data.eval_path}) has no samples; AUROC needs labelled dev data"
            if n_dev == 0
            else "the dev split has no labels; AUROC needs labelled dev data"
        )
    run_config = {
        "kind": "finetune",
        "model": parts["vconfig"].to_dict(),
        "tokenizer": parts["tokenizer"],
        "init": None if config.from_scratch else config.init,
        "run": to_dict(config),
    }
    trainer = Trainer(
        model,
        BatchStream(splits["train"], config.batch_size, parts["train_collate"], seed=seed),
        run_dir=out,
        optim=config.optim,
        loop=config.loop,
        run_config=run_config,
        periodic=[
            Periodic("eval", config.loop.eval_every, lambda m: predict(m, evaluation["dev"]))
        ],
        monitor="auroc",
        patience=config.patience,
    )
    trainer.fit(resume=resume)
    if not is_main_process():
        return {}  # rank 0 evaluates the best weights and writes eval.json
    if trainer.stopped_early:
        log.info("stopped early at step %d (best dev AUROC %.4f)", trainer.step, trainer.best)
    best, _ = load_model_weights(out / "best")
    model.load_state_dict(best)
    model.eval()
    result: dict[str, Any] = {"steps": trainer.step, "from_scratch": config.from_scratch}
    with torch.no_grad():
        for name, batches in evaluation.items():
            for k, v in predict(model, batches).items():
                result[f"{name}_{k}"] = v
    final = "test" if "test" in evaluation else "dev"
    result["accuracy"], result["auroc"] = result[f"{final}_accuracy"], result[f"{final}_auroc"]
    (out / "eval.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    log.info(
        "fine-tuned (%s): %s accuracy %.4f, AUROC %.4f",
        out,
        final,
        result["accuracy"],
        result["auroc"],
    )
    return result
