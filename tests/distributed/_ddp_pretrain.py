"""Worker for test_ddp_train: ``repalign train pretrain --config CFG`` under torchrun.

Runs the real CLI command; the only addition is that every rank saves its final
weights to ``OUT/rank{R}.pt`` so the test can check that the ranks agree.
"""

from __future__ import annotations

import sys

import torch

from repalign import distributed
from repalign.cli.main import app
from repalign.train import pretrain
from repalign.train.loop import Trainer


class WeightDumpingTrainer(Trainer):
    def fit(self, **kwargs):  # type: ignore[no-untyped-def]
        rank = distributed.get_rank()
        result = super().fit(**kwargs)
        weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        torch.save(weights, self.run_dir / f"rank{rank}.pt")
        return result


if __name__ == "__main__":
    pretrain.Trainer = WeightDumpingTrainer  # type: ignore[misc]
    app(["train", "pretrain", "--config", sys.argv[1]], standalone_mode=False)
