"""Reading a state dict from a weights file and loading it into a model, with errors that
say what the file must be (used by ViLBERT's vision tower and the module adapter)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a ``.safetensors`` file, or a torch file read with
    ``weights_only=True`` holding the state dict itself or under ``state_dict`` / ``model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of many kinds: say what the file must be
        raise ValueError(
            f"cannot read weights from {path} with torch.load(weights_only=True): {exc}; "
            "give a state dict saved with torch.save or a .safetensors file"
        ) from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors)")
    return dict(state)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; every key must fit, in name and shape."""
    try:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        raise ValueError(f"weights in {source} do not fit {type(model).__name__}: {exc}") from None
    if missing or unexpected:
        raise ValueError(
            f"weights in {source} do not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def load_weights(model: nn.Module, path: str | Path) -> None:
    """:func:`read_state_dict` of ``path`` loaded into ``model`` with :func:`load_state`."""
    load_state(model, read_state_dict(path), str(path))
