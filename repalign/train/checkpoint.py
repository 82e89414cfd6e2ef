"""Checkpoints: safetensors weights, JSON config, loop state, and a manifest of hashes.

A checkpoint directory holds

- ``model.safetensors``: every tensor of ``model.state_dict()``; tensors that share
  storage (tied embeddings) are stored once and their other names are listed
  in the file's metadata, so loading restores the full, bit-exact state dict;
- ``config.json``: whatever the caller passes (model config, tasks, tokenizer);
- ``trainer_state.pt``: step, optimizer state and RNG states, only tensors and
  plain Python containers so ``torch.load(weights_only=True)`` reads it;
- ``manifest.json``: format version and the sha256 of each file, checked on load,
  so a truncated or altered file is reported as such instead of failing deep
  inside a deserialiser.

Directories are written to a temporary sibling and renamed into place, so an
interruption never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from repalign.provenance import sha256_file

log = logging.getLogger(__name__)

FORMAT = "repalign-checkpoint"
VERSION = 1
WEIGHTS, CONFIG, STATE, MANIFEST = (
    "model.safetensors",
    "config.json",
    "trainer_state.pt",
    "manifest.json",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or does not fit the model or run."""


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """The python, numpy, torch and CUDA generator states as weights_only-safe values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global RNG on purpose)
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (global RNG on purpose)
        (
            nps["name"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- save


def _dedupe_shared(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per storage view; return ``(tensors, alias -> kept name)``."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in state_dict.items():
        if tensor.device.type != "meta" and tensor.numel() > 0:
            key = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tuple(tensor.stride()),
                tensor.dtype,
            )
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        kept[name] = tensor.detach().to("cpu").contiguous()
    return kept, aliases


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    trainer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically (replacing any old one)."""
    path = Path(path)
    state_dict = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    tensors, aliases = _dedupe_shared(state_dict)
    tmp = _fresh_temporary(path)
    save_file(tensors, tmp / WEIGHTS, metadata={"aliases": json.dumps(aliases), "format": FORMAT})
    (tmp / CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str))
    files = [WEIGHTS, CONFIG]
    if trainer_state is not None:
        torch.save(dict(trainer_state), tmp / STATE)
        files.append(STATE)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "files": {f: sha256_file(tmp / f) for f in files},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return _publish(tmp, path)


def copy_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` a copy of the checkpoint directory ``source``, atomically (replacing
    any old one). Files are hard-linked where the file system allows, so a second name
    for a large checkpoint (``RUN/last`` next to ``checkpoints/step-N``) costs no
    writing; checkpoint files are never modified in place, only replaced, so the two
    names cannot diverge."""
    source, path = Path(source), Path(path)
    tmp = _fresh_temporary(path)
    for file in source.iterdir():
        try:
            os.link(file, tmp / file.name)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copy2(file, tmp / file.name)
    return _publish(tmp, path)


def _fresh_temporary(path: Path) -> Path:
    """An empty ``.NAME.tmp`` sibling of ``path`` to write a checkpoint into."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, path: Path) -> Path:
    """Rename the finished ``tmp`` to ``path``; an old ``path`` is removed only after."""
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


# --------------------------------------------------------------------------- load


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir itself, or a run dir (its ``last/``)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / "last" / MANIFEST).is_file():
        return path / "last"
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    raise CheckpointError(
        f"{path} is not a repalign checkpoint (no {MANIFEST}, and no last/{MANIFEST} for a run "
        "directory); pass RUN_DIR, RUN_DIR/last or RUN_DIR/checkpoints/step-N"
    )


def verify_checkpoint(path: str | Path) -> Path:
    """Check the manifest and every file's sha256; return the checkpoint directory."""
    path = resolve_checkpoint(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path / MANIFEST} is corrupted ({err}); the checkpoint is unusable"
        ) from err
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} (format={manifest.get('format')!r})")
    if manifest.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer repalign (checkpoint version {manifest['version']} > "
            f"{VERSION}); upgrade repalign to read it"
        )
    for name, digest in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if sha256_file(file) != digest:
            raise CheckpointError(
                f"checkpoint file {file} is corrupted (sha256 differs from the manifest); "
                "use an earlier checkpoint under RUN/checkpoints/ or retrain"
            )
    return path


def load_model_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, config)`` of a checkpoint dir or run dir, verified and complete.

    Tied tensors come back as the same tensor object under every name.
    """
    path = verify_checkpoint(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path / WEIGHTS}: {err}") from err
    for alias, name in json.loads(metadata.get("aliases", "{}")).items():
        tensors[alias] = tensors[name]
    config = json.loads((path / CONFIG).read_text())
    return tensors, config


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    path = verify_checkpoint(path)
    if not (path / STATE).is_file():
        raise CheckpointError(f"{path} holds weights only (no {STATE}); it cannot be resumed")
    return torch.load(path / STATE, map_location="cpu", weights_only=True)


def load_into(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = ""
) -> None:
    """``model.load_state_dict(state_dict)`` with an error that names what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"shape mismatch {len(shapes)} (e.g. {shapes[:3]})")
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: "
            + "; ".join(parts)
            + ". Was it made with another preset or config? Build the model from the "
            "checkpoint's config.json"
        )
    model.load_state_dict(state_dict, strict=True)


def config_mismatch(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Keys whose values differ between two nested config dicts, as ``a.b: saved != current``."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += config_mismatch(a, b, f"{prefix}{key}.")
        elif json.dumps(a, default=str) != json.dumps(b, default=str):
            diffs.append(f"{prefix}{key}: {a!r} (checkpoint) != {b!r} (now)")
    return diffs
