"""Tests added after a hand-made mutation audit of repalign.train.checkpoint: each one
kills a mutant (a small plausible bug) that the rest of the suite let through."""

from __future__ import annotations

import json

import pytest
import torch

from repalign.train.checkpoint import (
    MANIFEST,
    CheckpointError,
    config_mismatch,
    load_model_weights,
    save_checkpoint,
    verify_checkpoint,
)


def test_views_of_one_storage_at_different_offsets_are_not_taken_for_aliases(tmp_path):
    """Two halves of one flat buffer have the same storage, shape and stride but not the
    same offset: both must be saved (keying on the storage alone loaded the first half
    under both names)."""
    flat = torch.arange(8, dtype=torch.float32)
    state = {"first": flat[:4], "second": flat[4:], "same": flat[:4]}
    save_checkpoint(tmp_path / "ck", state, {})
    loaded, _ = load_model_weights(tmp_path / "ck")
    assert torch.equal(loaded["first"], flat[:4]) and torch.equal(loaded["second"], flat[4:])
    assert loaded["same"] is loaded["first"]  # a true alias stays one tensor


def test_a_manifest_of_another_format_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {})
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "format": "someone-else"}))
    with pytest.raises(CheckpointError, match="format='someone-else'"):
        verify_checkpoint(path)


def test_config_mismatch_names_nested_keys_by_their_full_path():
    saved = {"model": {"text": {"layers": 2}}, "lr": 1e-3}
    now = {"model": {"text": {"layers": 4}}, "lr": 1e-3}
    assert config_mismatch(saved, now) == ["model.text.layers: 2 (checkpoint) != 4 (now)"]


def test_a_manifest_from_a_newer_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {})
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "version": manifest["version"] + 1}))
    with pytest.raises(CheckpointError, match="newer repalign"):
        verify_checkpoint(path)


def test_non_contiguous_tensors_are_saved(tmp_path):
    """A transposed view (not contiguous) is written as its values; safetensors itself
    refuses non-contiguous tensors."""
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4).T
    save_checkpoint(tmp_path / "ck", {"w": w}, {})
    loaded, _ = load_model_weights(tmp_path / "ck")
    assert torch.equal(loaded["w"], w)


def test_a_leftover_temporary_directory_from_an_interrupted_save_is_replaced(tmp_path):
    stale = tmp_path / ".ck.tmp"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"half written")
    path = save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {})
    assert not (path / "junk.bin").exists() and not stale.exists()
    verify_checkpoint(path)


def test_a_state_dict_missing_a_weight_is_refused_with_the_name():
    """A missing key alone (no unexpected or mis-shaped one) must give the named
    CheckpointError, not torch's strict-loading RuntimeError."""
    from repalign.train.checkpoint import load_into

    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing 1 \(e.g. \['bias'\]\)"):
        load_into(model, {"weight": torch.zeros(2, 2)}, source="ck")


def test_a_run_directory_resolves_to_its_last_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "run" / "last", {"w": torch.arange(3.0)}, {"step": 7})
    state, config = load_model_weights(tmp_path / "run")
    assert torch.equal(state["w"], torch.arange(3.0)) and config == {"step": 7}


def test_a_weights_only_checkpoint_cannot_be_resumed(tmp_path):
    from repalign.train.checkpoint import load_trainer_state

    path = save_checkpoint(tmp_path / "ck", {"w": torch.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="weights only"):
        load_trainer_state(path)
