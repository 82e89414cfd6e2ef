"""A model-agnostic training loop.

The loop knows one thing about the model: ``model(batch)["loss"]`` is the
differentiable loss; every other 0-d tensor in the output is a metric that is
averaged over the log interval and written to ``RUN/log.jsonl``. Metrics stay
on the device between log steps (no host syncs in the step).

Resuming is exact: batches are a pure function of ``(seed, index)``
(:class:`~repalign.train.batches.BatchStream`), and a checkpoint stores the
optimizer and the RNG states as they were at the start of the next step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repalign import distributed
from repalign._numerics import resolve_device
from repalign._progress import progress_bar
from repalign._tensors import to_device
from repalign.train.batches import BatchStream, batch_loader
from repalign.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    config_mismatch,
    copy_checkpoint,
    load_into,
    load_model_weights,
    load_trainer_state,
    restore_rng_state,
    save_checkpoint,
)
from repalign.train.config import LoopConfig, OptimConfig, save_config
from repalign.train.interrupt import RunInterrupted, StopOnSignal
from repalign.train.prefetch import DevicePrefetcher
from repalign.train.runlog import RunLog
from repalign.train.schedule import lr_factor, param_groups

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], Mapping[str, float]]


@dataclass
class Periodic:
    """``fn(model)`` every ``every`` steps (and after the last); results logged as ``split``."""

    split: str
    every: int
    fn: Evaluator


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation, probes) without disturbing the training RNG streams."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
    return 0


class Trainer:
    """Trains ``model`` on ``batches`` and writes everything under ``run_dir``.

    ``run_config`` is stored in every checkpoint's ``config.json``; its
    ``"model"`` entry must match on resume. ``periodic`` evaluators run every
    N steps and at the end; ``monitor``/``patience`` stop early when the
    monitored eval metric (higher is better) has not improved for ``patience``
    evaluations, keeping the best weights in ``RUN/best``.

    Under ``torchrun`` (WORLD_SIZE > 1) the model runs as DistributedDataParallel
    (``find_unused_parameters=False``); ``batches`` is the global batch, split over
    the ranks (:class:`repalign.distributed.ShardedBatchStream`); only rank 0
    evaluates, logs and writes checkpoints.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: BatchStream,
        *,
        run_dir: str | Path,
        optim: OptimConfig,
        loop: LoopConfig,
        run_config: Mapping[str, Any] | None = None,
        periodic: list[Periodic] | None = None,
        monitor: str | None = None,
        patience: int = 0,
    ) -> None:
        self.model, self.batches = model, batches
        self.run_dir = Path(run_dir)
        self.optim_cfg, self.loop = optim, loop
        self.run_config = dict(run_config or {})
        self.periodic = list(periodic or [])
        self.monitor, self.patience = monitor, patience
        self.device = distributed.local_device(resolve_device(loop.device))
        if loop.threads > 0:
            torch.set_num_threads(loop.threads)
        self._owns_group = distributed.launched_by_torchrun() and not distributed.is_distributed()
        distributed.init_from_env(self.device)
        self.is_main = distributed.is_main_process()
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if distributed.is_distributed():
            rank, world = distributed.get_rank(), distributed.get_world_size()
            self.batches = distributed.ShardedBatchStream(batches, rank, world)  # type: ignore[assignment]
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(model, optim),
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
            fused=self.device.type == "cuda",
        )
        wrapped: nn.Module = model
        if distributed.is_distributed():
            self.ddp = wrapped = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
        self.forward: Callable[[Any], Mapping[str, torch.Tensor]] = wrapped
        if loop.compile:
            mode = None if loop.compile_mode == "default" else loop.compile_mode
            self.forward = torch.compile(wrapped, mode=mode)
        # CUDA graphs reuse their output memory on every replay: each step is marked as a new
        # one (the step's metrics are new tensors, computed before the next replay)
        self._cuda_graphs = loop.compile and loop.compile_mode in (
            "reduce-overhead",
            "max-autotune",
        )
        self.step = 0
        self.best: float | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.log = RunLog(self.run_dir / "log.jsonl", enabled=self.is_main)
        self.last_eval: dict[str, float] = {}
        self.elapsed = 0.0  # wall seconds of training so far, evaluations included
        self._started = time.perf_counter()

    # ------------------------------------------------------------------ state

    def state(self, rng: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "rng": dict(rng),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "stopped_early": self.stopped_early,
            "elapsed": self._elapsed(),
            "seed": self.loop.seed,
        }

    def _elapsed(self) -> float:
        return self.elapsed + time.perf_counter() - self._started

    def save(self, path: Path, rng: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        save_checkpoint(path, self.model, self.run_config, self.state(rng))

    def resume(self, path: str | Path | None = None) -> None:
        """Load weights, optimizer, RNG and step from ``path`` (default ``RUN/last``)."""
        path = Path(path) if path is not None else self.run_dir / "last"
        state_dict, saved_config = load_model_weights(path)
        diffs = config_mismatch(saved_config.get("model", {}), self.run_config.get("model", {}))
        if diffs:
            raise CheckpointError(
                f"cannot resume from {path}: the model config differs from the checkpoint's: "
                + "; ".join(diffs[:5])
                + ". Resume with the run's own config (RUN/config.yaml) or start a new --out"
            )
        load_into(self.model, state_dict, source=str(path))
        state = load_trainer_state(path)
        if state.get("seed") != self.loop.seed:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with seed {state.get('seed')}, "
                f"this run has seed {self.loop.seed}; the data order would differ"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best, self.bad_evals = state["best"], int(state["bad_evals"])
        self.stopped_early = bool(state.get("stopped_early", False))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.log.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ evaluation

    def run_periodic(self, final: bool = False) -> None:
        if not self.is_main:
            return
        for p in self.periodic:
            if not (final or (p.every > 0 and self.step % p.every == 0)):
                continue
            self.model.eval()
            try:
                with preserved_rng(), torch.no_grad(), self._autocast():
                    values = {k: float(v) for k, v in p.fn(self.model).items()}
            finally:
                self.model.train()
            self.log.write(
                {"step": self.step, "split": p.split, **values, "elapsed_s": self._elapsed()}
            )
            if p.split == "eval":
                self.last_eval = values
                self._early_stopping(values)
            log.info(
                "step %d %s: %s",
                self.step,
                p.split,
                ", ".join(f"{k}={v:.4g}" for k, v in values.items()),
            )

    def _early_stopping(self, values: Mapping[str, float]) -> None:
        if self.monitor is None:
            return
        if self.monitor not in values:
            raise KeyError(
                f"monitor {self.monitor!r} is not among the eval metrics {sorted(values)}"
            )
        value = values[self.monitor]
        if self.best is None or value > self.best:
            self.best, self.bad_evals = value, 0
            save_checkpoint(self.run_dir / "best", self.model, self.run_config)
        else:
            self.bad_evals += 1
            if self.patience > 0 and self.bad_evals >= self.patience:
                self.stopped_early = True

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.loop.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ training

    def _set_lr(self) -> None:
        factor = lr_factor(self.step, self.optim_cfg, self.loop.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.optim_cfg.lr * group["lr_scale"] * factor

    def train_step(
        self, micro_batches: list[Any]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One optimizer step over ``micro_batches`` (gradient accumulation); metrics stay
        on the device. The learning rate is whatever ``fit`` last set."""
        self.optimizer.zero_grad(set_to_none=True)
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}  # a metric may be missing in some micro-batches
        for i, batch in enumerate(micro_batches):
            # DDP: all-reduce gradients once, after the last micro-batch
            last = i == len(micro_batches) - 1
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last else None
            with no_sync or contextlib.nullcontext():
                with self._autocast():
                    out = self.forward(to_device(batch, self.device))
                if "loss" not in out:
                    raise KeyError(f"the model's output has no 'loss' (keys: {sorted(out)})")
                (out["loss"] / len(micro_batches)).backward()
            for k, v in out.items():
                if isinstance(v, torch.Tensor) and v.ndim == 0:
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v
                    counts[k] = counts.get(k, 0) + 1
        grad_norm = None
        if self.optim_cfg.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip)
        self.optimizer.step()
        metrics = {k: v / counts[k] for k, v in sums.items()}
        return metrics, grad_norm

    def fit(self, *, resume: bool = False) -> dict[str, float]:
        """Train to ``loop.steps``; return the final eval metrics."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
            if self.is_main and "run" in self.run_config:  # the config the run goes on with
                save_config(self.run_config["run"], self.run_dir / "config.yaml")
        elif self.is_main:
            self._clear_previous_run()
        if self.step == 0:
            seed_everything(self.loop.seed)
        self.model.train()
        accum = self.loop.grad_accum
        loader = batch_loader(
            self.batches,
            self.step * accum,
            self.loop.steps * accum,
            num_workers=self.loop.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        batches = DevicePrefetcher(iter(loader), self.device)  # copies overlap the step
        window: dict[str, list[torch.Tensor]] = {}
        pairs, t0 = 0, time.perf_counter()
        self._started = t0
        try:
            with (
                StopOnSignal() as stop,
                progress_bar(
                    "train",
                    self.loop.steps,
                    start=self.step,
                    enabled=self.loop.progress and self.is_main,
                ) as advance,
            ):
                while self.step < self.loop.steps and not self.stopped_early:
                    self._set_lr()
                    micro = [next(batches) for _ in range(accum)]
                    pairs += sum(_batch_size(b) for b in micro)
                    metrics, grad_norm = self.train_step(micro)
                    if grad_norm is not None:
                        metrics["grad_norm"] = grad_norm.detach().float()
                    for k, v in metrics.items():
                        window.setdefault(k, []).append(v)
                    self.step += 1
                    last = self.step == self.loop.steps
                    logged = self.step % self.loop.log_every == 0 or last
                    if logged:
                        record = self._flush(window, pairs, time.perf_counter() - t0)
                        pairs, t0 = 0, time.perf_counter()
                        loss = record.get("loss")
                        advance(self.step, None if loss is None else f"loss {loss:.4f}")
                    else:
                        advance(self.step)
                    if not last:
                        self.run_periodic()
                        if self.monitor is not None and any(
                            p.every > 0 and self.step % p.every == 0 for p in self.periodic
                        ):  # rank 0 evaluated and decided; every rank must stop with it
                            self.stopped_early = distributed.broadcast_flag(self.stopped_early)
                    every = self.loop.checkpoint_every
                    if every > 0 and self.step % every == 0 and not last:
                        self._checkpoint()
                    if not last and self._stop_requested(stop, logged):
                        self._stop(window, pairs, time.perf_counter() - t0, stop.received)
                if window:
                    self._flush(window, pairs, time.perf_counter() - t0)
                # saved before the final evaluation, which a signal then stops at once (a
                # resumed run, with nothing left to train, redoes it)
                self.save(self.run_dir / "last", capture_rng_state())
                if self.is_main:  # the only rank that evaluates
                    stop.stop_at_once(self.step, self.run_dir / "last")
                self.run_periodic(final=True)
        except KeyboardInterrupt as err:
            if isinstance(err, RunInterrupted):
                self._leave_group()
            else:
                log.warning(
                    "aborted after step %d without saving (a step cut short may be half "
                    "applied); %s holds the last checkpoint",
                    self.step,
                    self.run_dir / "last",
                )
            raise
        self.log.write_csv(self.run_dir / "log.csv")
        self._leave_group()
        return dict(self.last_eval)

    def _leave_group(self) -> None:
        if self._owns_group:
            distributed.barrier()  # rank 0 has written everything before any rank leaves
            distributed.destroy()

    def _clear_previous_run(self) -> None:
        """A new run in a folder that holds an earlier one: remove that run's outputs, so its
        checkpoints are neither mixed with the new run's nor pruned in their place."""
        names = ("last", "checkpoints", "best", "eval.json", "log.csv", "training.png")
        old = [self.run_dir / n for n in names if (self.run_dir / n).exists()]
        if old:
            log.warning(
                "starting a new run in %s: removing the earlier run's %s",
                self.run_dir,
                ", ".join(p.name for p in old),
            )
        for path in old:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if self.log.path.exists():
            self.log.path.unlink()

    def _stop_requested(self, stop: StopOnSignal, logged: bool) -> bool:
        """Whether a signal asks to stop after this step. Under DDP every rank must leave
        the loop after the same step, so ranks agree at log steps (which sync anyway)."""
        if not distributed.is_distributed():
            return stop.requested
        return logged and distributed.any_rank(stop.requested)

    def _stop(
        self,
        window: dict[str, list[torch.Tensor]],
        pairs: int,
        seconds: float,
        signal_name: str | None,
    ) -> None:
        """Log the steps since the last record, save ``RUN/last`` and raise :class:`RunInterrupted`."""
        if window:
            self._flush(window, pairs, seconds)
        self.save(self.run_dir / "last", capture_rng_state())
        self.log.write_csv(self.run_dir / "log.csv")
        raise RunInterrupted(signal_name or "SIGINT", self.step, self.run_dir / "last")

    def _checkpoint(self) -> None:
        if not self.is_main:
            return
        # captured here, not every step: nothing since the step drew from the RNGs (evaluation
        # and probes run under preserved_rng), so this is the state the next step starts from
        rng = capture_rng_state()
        ckpt_dir = self.run_dir / "checkpoints"
        self.save(ckpt_dir / f"step-{self.step}", rng)
        copy_checkpoint(ckpt_dir / f"step-{self.step}", self.run_dir / "last")
        old = sorted(
            (p for p in ckpt_dir.glob("step-*") if p.name[5:].isdigit()),
            key=lambda p: int(p.name[5:]),
        )
        for p in old[: max(0, len(old) - self.loop.keep_checkpoints)]:
            shutil.rmtree(p)

    def _flush(
        self, window: dict[str, list[torch.Tensor]], pairs: int, seconds: float
    ) -> dict[str, Any]:
        names = list(window)
        means = torch.stack([torch.stack(window[k]).mean() for k in names])
        values = distributed.all_reduce_mean(means).tolist()  # one sync (mean over ranks)
        window.clear()
        record: dict[str, Any] = {
            "step": self.step,
            "split": "train",
            **dict(zip(names, values, strict=True)),
        }
        record["lr"] = (
            self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0]["lr_scale"]
        )
        pairs *= distributed.get_world_size()  # every rank trains on as many pairs
        record["pairs_per_s"] = pairs / seconds if seconds > 0 else None
        record["elapsed_s"] = self._elapsed()
        if not math.isfinite(record.get("loss", 0.0)):
            raise FloatingPointError(
                f"training loss is {record['loss']} at step {self.step}; lower optim.lr, "
                "raise optim.warmup_steps, or set optim.grad_clip"
            )
        self.log.write(record)
        return record


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: call before building a model so runs are repeatable."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (global RNG on purpose)
    torch.manual_seed(seed)


def start_run(config: Any, *, resume: bool = False) -> Path:
    """Create ``config.out``, save the config there (rank 0 only under torchrun) and seed
    everything from ``config.loop.seed``, before the model is built; return the run folder.

    A resumed run's config is saved by :meth:`Trainer.fit` once the checkpoint accepted
    it: a refused resume must leave the run's own ``config.yaml`` as it was."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process() and not resume:  # under torchrun only rank 0 writes
        save_config(config, out / "config.yaml")
    seed_everything(config.loop.seed)  # model initialisation is part of the run
    return out
