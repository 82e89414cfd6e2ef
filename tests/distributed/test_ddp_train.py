"""`torchrun --nproc-per-node 2 -m repalign train pretrain` on CPU (gloo) equals one process.

Tasks: ITC only, with dropout off, so a run is deterministic: the 2-rank run (4 pairs
per rank, features gathered across ranks with gradients) must follow the same loss
curve and reach the same weights as one process with the global batch of 8.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from repalign.train.config import PretrainConfig, load_config
from repalign.train.pretrain import run_pretraining
from tests._signals import default_signals_in_child

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def _config(out: Path) -> dict:
    no_dropout = {
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "text": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "vision": {"attn_drop_rate": 0.0},
    }
    return {
        "out": str(out), "preset": "tiny", "model": no_dropout, "tasks": ["itc"],
        "batch_size": 8, "augment": False,
        "data": {"name": "synthetic", "n_train": 64, "n_eval": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "loop": {"steps": STEPS, "log_every": 1, "device": "cpu", "threads": 1,
                 "progress": False, "checkpoint_every": 0},
    }  # fmt: skip


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


def test_two_gloo_ranks_match_one_process(tmp_path):
    ddp_cfg = tmp_path / "ddp.yaml"
    ddp_cfg.write_text(yaml.safe_dump(_config(tmp_path / "ddp")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "tests/distributed/_ddp_pretrain.py"), str(ddp_cfg)]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    single = tmp_path / "single"
    cfg = load_config(PretrainConfig, base=_config(single))
    run_pretraining(cfg)

    ddp = tmp_path / "ddp"
    rank0, rank1 = torch.load(ddp / "rank0.pt"), torch.load(ddp / "rank1.pt")
    for name, w in rank0.items():  # DDP keeps the replicas bit-identical
        assert torch.equal(w, rank1[name]), name
    # only rank 0 wrote the run directory's files
    assert sorted(p.name for p in ddp.iterdir() if p.suffix != ".pt") == sorted(
        p.name for p in single.iterdir()
    )
    got, want = _losses(ddp), _losses(single)
    assert len(got) == len(want) == STEPS
    assert got == pytest.approx(want, rel=1e-4), (got, want)
    from repalign.train.checkpoint import load_model_weights

    ref, _ = load_model_weights(single / "last")
    diffs = {k: float((rank0[k] - ref[k]).abs().max()) for k in ref if ref[k].is_floating_point()}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 2e-4, (worst, diffs[worst])


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_saves(tmp_path):
    """A scheduler's SIGTERM reaches torchrun, which passes it on to the ranks: they agree on
    the step to stop after (at a log step), rank 0 saves RUN/last, and all exit in time."""
    from repalign.train.checkpoint import load_trainer_state

    run = tmp_path / "ddp"
    config = _config(run)
    config["loop"].update(steps=100_000, log_every=2)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "repalign", "train", "pretrain", "--config", str(cfg_path)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_signals_in_child,
    )  # fmt: skip
    log = run / "log.jsonl"
    deadline = time.monotonic() + 180
    while not (log.exists() and log.read_text().count('"train"') >= 2):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no training steps logged in 180 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "stopped after step" in err, err[-3000:]
    step = load_trainer_state(run / "last")["step"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert step % 2 == 0 and max(r["step"] for r in records) == step
