"""Test inputs: correlated representations with a decaying spectrum, like real layers."""

from __future__ import annotations

import torch


def related_pair(
    n: int = 60, d1: int = 12, d2: int = 9, *, latent: int = 5, noise: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -1, latent, dtype=torch.float64)
    x = (z * scales) @ torch.randn(latent, d1, generator=g, dtype=torch.float64)
    y = torch.tanh(z @ torch.randn(latent, d2, generator=g, dtype=torch.float64))
    x = x + noise * torch.randn(n, d1, generator=g, dtype=torch.float64)
    y = y + noise * torch.randn(n, d2, generator=g, dtype=torch.float64)
    return x + 3.0, y - 1.0


def random_orthogonal(d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))
