"""torch.compile modes on a GPU: the compiled (and CUDA-graphs) pretraining steps train
like the eager one. Skipped without CUDA (run by benchmarks/gpu_session.sh's pytest step)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from repalign.models.vilbert.config import preset
from repalign.train.config import LoopConfig, OptimConfig
from repalign.train.loop import Trainer
from repalign.train.objectives import PretrainModel
from repalign.train.tasks import TASKS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _losses(tmp_path: Path, compile: bool, mode: str) -> list[float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from train import make_batch  # benchmarks/train.py: a batch for every task

    vconfig = preset("tiny")
    torch.manual_seed(0)
    model = PretrainModel(vconfig, tasks=TASKS)
    loop = LoopConfig(device="cuda", compile=compile, compile_mode=mode, progress=False)
    trainer = Trainer(model, None, run_dir=tmp_path, optim=OptimConfig(), loop=loop)
    batch = make_batch(vconfig, 16, 16, torch.device("cuda"))
    model.eval()  # no dropout: eager and compiled steps see the same computation
    losses = []
    for _ in range(4):
        metrics, _ = trainer.train_step([batch])
        losses.append(float(metrics["loss"]))
    return losses


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_steps_train_like_eager(tmp_path, mode):
    eager = _losses(tmp_path / "eager", False, "default")
    compiled = _losses(tmp_path / mode, True, mode)
    assert all(torch.isfinite(torch.tensor(compiled)))
    assert compiled[-1] < compiled[0]  # it learns
    # bf16 autocast and other kernels: close, not bit-equal
    assert compiled == pytest.approx(eager, rel=0.05, abs=0.05)
