"""A tiny regression problem for loop tests: y = w·x + noise, with dropout and tied weights."""

from __future__ import annotations

import torch
from torch import nn

from repalign.train.config import LoopConfig, OptimConfig

W_TRUE = torch.tensor([1.5, -2.0, 0.5, 3.0])


class ToyData:
    def __init__(self, n: int = 64) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def toy_collate(indices: list[int]) -> dict[str, torch.Tensor]:
    """Inputs drawn from the global torch RNG: exercises the per-batch seeding."""
    x = torch.randn(len(indices), 4)
    y = x @ W_TRUE + 0.01 * torch.randn(len(indices))
    return {"x": x, "y": y, "index": torch.tensor(indices)}


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 16)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(16, 1)
        self.norm = nn.LayerNorm(16)
        self.tied = nn.Linear(16, 16, bias=False)
        self.tied_again = nn.Linear(16, 16, bias=False)
        self.tied_again.weight = self.tied.weight

    def pretrained_prefixes(self) -> tuple[str, ...]:
        return ("encoder.",)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.norm(torch.relu(self.encoder(batch["x"])))
        h = self.dropout(h + 0.1 * self.tied_again(self.tied(h)))
        pred = self.head(h).squeeze(-1)
        loss = nn.functional.mse_loss(pred, batch["y"])
        return {"loss": loss, "mae": (pred - batch["y"]).abs().mean().detach()}


def toy_configs(steps: int = 6, **loop) -> tuple[OptimConfig, LoopConfig]:
    optim = OptimConfig(lr=5e-2, warmup_steps=2, schedule="cosine")
    return optim, LoopConfig(steps=steps, **{"log_every": 1, "progress": False, **loop})
