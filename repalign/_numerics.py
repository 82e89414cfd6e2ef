"""Input validation, device and dtype policy: the one place every metric goes through.

Metrics accept torch tensors or numpy arrays of shape ``(n, d)``. They are
converted once here (numpy -> CPU tensor, never a copy to another device),
checked once, and cast to the compute dtype (float64 unless asked otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPUTE_DTYPES = (torch.float32, torch.float64)


def as_tensor(a: Any, name: str = "x") -> torch.Tensor:
    """Return ``a`` as a torch tensor on its own device; numpy arrays go to the CPU."""
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise TypeError(f"{name} is a numpy array of Python objects; pass a numeric array")
        return torch.from_numpy(np.ascontiguousarray(a))
    raise TypeError(
        f"{name} must be a torch.Tensor or numpy.ndarray of shape (n_samples, n_features), "
        f"got {type(a).__name__}"
    )


def check_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in _COMPUTE_DTYPES:
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    return dtype


def check_matrix(
    a: Any, name: str, *, dtype: torch.dtype = torch.float64, check_finite: bool = True
) -> torch.Tensor:
    """Validate one ``(n, d)`` input and cast it to the compute ``dtype``."""
    t = as_tensor(a, name)
    if t.is_complex():
        raise TypeError(f"{name} is complex ({t.dtype}); representations must be real-valued")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; pass floating-point features "
            f"(e.g. x.float()); integer or boolean inputs are almost always a bug upstream"
        )
    if t.ndim != 2:
        hint = (
            " Pool or flatten first: e.g. x.mean(dim=1) over tokens, x[:, 0] for a [CLS] token, "
            "or x.flatten(1) to keep every position."
            if t.ndim > 2
            else " Use x.reshape(-1, 1) for a single feature."
        )
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}.{hint}"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    t = t.to(dtype=check_compute_dtype(dtype))
    if check_finite and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or Inf value(s); clean or drop those rows first"
        )
    return t


def check_pair(
    x: Any,
    y: Any,
    *,
    dtype: torch.dtype = torch.float64,
    min_rows: int = 2,
    why: str = "",
    nonconstant: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pair of representations of the same ``n`` stimuli.

    ``nonconstant`` rejects inputs whose every column is constant across
    samples, for which similarity metrics are undefined.
    """
    tx, ty = as_tensor(x, "x"), as_tensor(y, "y")
    if tx.device != ty.device:
        raise ValueError(
            f"x is on {tx.device} and y on {ty.device}; move both to one device (e.g. y.to(x.device))"
        )
    tx = check_matrix(tx, "x", dtype=dtype)
    ty = check_matrix(ty, "y", dtype=dtype)
    if tx.shape[0] != ty.shape[0]:
        raise ValueError(
            f"x has {tx.shape[0]} rows and y has {ty.shape[0]}; rows must be the same stimuli "
            "in the same order in both"
        )
    check_rows(tx.shape[0], min_rows, why)
    if nonconstant:
        require_variance(tx, "x")
        require_variance(ty, "y")
    return tx, ty


def check_rows(n: int, min_rows: int, why: str = "") -> None:
    if n < min_rows:
        reason = f" ({why})" if why else ""
        raise ValueError(f"need at least {min_rows} samples{reason}, got n={n}")


def check_same_rows(mats: Sequence[torch.Tensor], names: Sequence[str]) -> int:
    ns = {int(m.shape[0]) for m in mats}
    if len(ns) != 1:
        detail = ", ".join(f"{nm}: {int(m.shape[0])}" for nm, m in zip(names, mats, strict=True))
        raise ValueError(f"all layers must have the same number of rows (stimuli); got {detail}")
    return ns.pop()


def center(x: torch.Tensor) -> torch.Tensor:
    """Subtract the column means."""
    return x - x.mean(dim=0, keepdim=True)


def require_variance(x: torch.Tensor, name: str) -> None:
    """Raise if every column of ``x`` is constant across samples (zero variance)."""
    if bool((x == x[:1]).all()):
        raise ValueError(
            f"{name} is constant across samples (zero variance after centering); "
            "a similarity to a constant representation is undefined"
        )


def scalar_like(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when one is visible, else the CPU) or a device name, checked: a name
    torch does not know, or CUDA where none is visible, is a ``ValueError`` saying what to use."""
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device {str(name)!r} is not a device name; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(name)!r} was asked for, but CUDA is not available here "
            "(no CUDA device is visible); use cpu"
        )
    return device
