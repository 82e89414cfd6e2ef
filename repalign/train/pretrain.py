"""ViLBERT pretraining: data -> PretrainCollator -> PretrainModel -> Trainer.

``run_pretraining(config)`` writes into ``config.out``: ``config.yaml`` (the
resolved config), ``log.jsonl``/``log.csv`` (per-step metrics, held-out
evaluations, alignment probes), checkpoints, and ``eval.json`` (the final
held-out evaluation, flat keys such as ``ap_accuracy``, ``mlm_accuracy``).

With MLM selected the evaluation also runs with every image replaced by noise
(``noise_mlm_accuracy``, ``noise_mlm_attribute_accuracy``): what the model can
guess from the caption alone, the yardstick for "MLM uses vision".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from repalign.distributed import is_main_process, launched_by_torchrun
from repalign.train.batches import BatchStream
from repalign.train.config import PretrainConfig, to_dict
from repalign.train.data import average_outputs, eval_batches, model_device, pretraining_data
from repalign.train.loop import Periodic, Trainer, start_run

log = logging.getLogger(__name__)

NOISE_SEED = 31337


class TaskSampler:
    """Forward pre-hook on a PretrainModel: task ``t`` is active in a training forward
    with probability ``ratios[t]`` (1 when absent); evaluation always runs every task.

    This is the "different batch sizes for tasks" knob: over a run task ``t`` sees
    ``ratios[t] x batch_size`` pairs per step on average, and an inactive task costs no
    compute. Draws come from the global torch RNG, which checkpoints save, so a
    resumed run samples the same tasks.
    """

    def __init__(self, tasks: Sequence[str], ratios: Mapping[str, float]) -> None:
        unknown = sorted(set(ratios) - set(tasks))
        if unknown:
            raise ValueError(f"task_ratios for tasks that are not selected: {unknown}")
        bad = {t: r for t, r in ratios.items() if not 0.0 < r <= 1.0}
        if bad:
            raise ValueError(f"task_ratios must lie in (0, 1], got {bad}")
        self.tasks = tuple(tasks)
        self.ratios = {t: float(ratios.get(t, 1.0)) for t in self.tasks}

    def __call__(self, module: nn.Module, args: Any) -> None:
        if not module.training:
            module.tasks = self.tasks
            return
        draws = torch.rand(len(self.tasks)).tolist()  # CPU generator: no device sync
        active = tuple(t for t, u in zip(self.tasks, draws, strict=True) if u < self.ratios[t])
        module.tasks = active or (max(self.tasks, key=self.ratios.__getitem__),)


def _noise_like(batches: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(NOISE_SEED)
    return [
        {**b, "pixel_values": torch.randn(b["pixel_values"].shape, generator=gen)} for b in batches
    ]


def _pool(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens, padding excluded when ``mask`` (B, T) is given."""
    if mask is None:
        return states.float().mean(1)
    m = mask.to(states.dtype)[..., None]
    return ((states * m).sum(1) / m.sum(1).clamp(min=1)).float()


def probe_alignment(
    vilbert: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], metrics: Sequence[str]
) -> dict[str, float]:
    """``{metric}_{layer}`` between text and vision streams, mean-pooled per sample, at the
    towers' outputs (``tower``) and after every fusion layer (``fusion0``, ``fusion1`` ...)."""
    from repalign.metrics import get_metric

    device = model_device(vilbert)
    texts: dict[str, list[torch.Tensor]] = {}
    visions: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        mask = batch["attention_mask"].to(device)
        out = vilbert(
            batch["input_ids"].to(device),
            mask,
            batch["pixel_values"].to(device),
            return_fusion_states=True,
        )
        layers = [("tower", out.text_tower, out.vision_tower)]
        layers += [(f"fusion{i}", t, v) for i, (t, v) in enumerate(out.fusion_states)]
        for name, t, v in layers:
            texts.setdefault(name, []).append(_pool(t, mask))
            visions.setdefault(name, []).append(_pool(v, None))
    scores = {}
    for metric in metrics:
        fn = get_metric(metric).fn
        for name in texts:
            scores[f"{metric}_{name}"] = fn(torch.cat(texts[name]), torch.cat(visions[name]))
    names = list(scores)
    return dict(zip(names, torch.stack(list(scores.values())).tolist(), strict=True))


def _check_probe_metrics(metrics: Sequence[str]) -> None:
    if metrics:
        from repalign.metrics import get_metric

        for m in metrics:
            get_metric(m)  # raises with the registered names when unknown


def build_data(config: PretrainConfig) -> dict[str, Any]:
    """Collators and datasets of a pretraining run (no model): what the data loader runs."""
    from repalign.data.text_vocab import load_tokenizer
    from repalign.models.vilbert import preset
    from repalign.train.collate import PretrainCollator
    from repalign.train.tasks import check_tasks

    tasks = check_tasks(config.tasks)
    vconfig = preset(config.preset, **config.model)
    tokenizer_source = vconfig.text_pretrained or "synthetic"
    tokenizer = load_tokenizer(tokenizer_source)
    common = dict(
        tasks=tasks,
        image_size=vconfig.vision_image_size,
        mlm_probability=config.mlm_probability,
        patch_size=vconfig.vision_patch_size if "mim" in tasks else None,
        seed=config.loop.seed,
    )
    train, held_out = pretraining_data(config.data)
    return {
        "vconfig": vconfig,
        "tasks": tasks,
        "tokenizer": tokenizer_source,
        "train_collate": PretrainCollator(tokenizer, augment=config.augment, **common),
        "eval_collate": PretrainCollator(tokenizer, augment=False, **common),
        "train": train,
        "held_out": held_out,
    }


def build(config: PretrainConfig) -> dict[str, Any]:
    """Model, collators and datasets of a pretraining run (no training)."""
    from repalign.train.objectives import PretrainModel

    parts = build_data(config)
    model = PretrainModel(
        parts["vconfig"],
        tasks=parts["tasks"],
        weights=config.task_weights or None,
        **config.objective,
    )
    if config.task_ratios:
        model.register_forward_pre_hook(TaskSampler(parts["tasks"], config.task_ratios))
    return {"model": model, **parts}


def run_pretraining(config: PretrainConfig, *, resume: bool = False) -> dict[str, float]:
    """Train, evaluate on held-out pairs and write ``RUN/eval.json``; return its contents."""
    _check_probe_metrics(config.probe.metrics)
    if config.task_ratios and launched_by_torchrun():
        raise ValueError(
            "task_ratios are not supported under torchrun: each rank would draw its own tasks "
            "(the ranks' RNG streams drift apart); drop task_ratios or run one process"
        )
    out = start_run(config, resume=resume)
    parts = build(config)
    model, tasks = parts["model"], parts["tasks"]
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "pretraining %s (%.2fM parameters) on %s with tasks %s for %d steps -> %s",
        config.preset,
        n_params / 1e6,
        config.data.cache or config.data.name,
        ",".join(tasks),
        config.loop.steps,
        out,
    )
    seed = config.loop.seed
    held = eval_batches(parts["held_out"], config.batch_size, parts["eval_collate"], seed)
    noisy = _noise_like(held) if "mlm" in tasks else []

    def evaluate(m: nn.Module) -> dict[str, float]:
        device = model_device(m)
        result = average_outputs(m, held, device)
        if noisy:
            noise = average_outputs(m, noisy, device)
            result.update({f"noise_{k}": v for k, v in noise.items() if k.startswith("mlm")})
        return result

    periodic = [Periodic("eval", config.loop.eval_every, evaluate)]
    if config.probe.metrics:
        n_probe = min(config.probe.n, len(parts["held_out"]))
        probe_set = [parts["held_out"][i] for i in range(n_probe)]
        probe_batches = eval_batches(probe_set, config.batch_size, parts["eval_collate"], seed)
        metrics = list(config.probe.metrics)
        periodic.append(
            Periodic(
                "probe",
                config.probe.every,
                lambda m: probe_alignment(m.vilbert, probe_batches, metrics),
            )
        )
    run_config = {
        "kind": "pretrain",
        "model": parts["vconfig"].to_dict(),
        "tasks": list(tasks),
        "task_weights": dict(config.task_weights),
        "objective": dict(config.objective),
        "tokenizer": parts["tokenizer"],
        "preset": config.preset,
        "run": to_dict(config),
    }
    stream = BatchStream(parts["train"], config.batch_size, parts["train_collate"], seed=seed)
    trainer = Trainer(
        model,
        stream,
        run_dir=out,
        optim=config.optim,
        loop=config.loop,
        run_config=run_config,
        periodic=periodic,
    )
    final = trainer.fit(resume=resume)
    if not is_main_process():
        return final  # empty: only rank 0 evaluates
    (out / "eval.json").write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")
    log.info("held-out evaluation: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))
    return final
