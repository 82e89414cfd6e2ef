import pytest
import torch

from repalign.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    copy_checkpoint,
    load_model_weights,
    load_trainer_state,
    restore_rng_state,
    save_checkpoint,
)
from tests.train._toy import ToyModel
from tests.train.test_loop import make_trainer, train_losses


def test_round_trip_is_bit_exact_including_tied_weights(tmp_path):
    torch.manual_seed(1)
    model = ToyModel()
    model.encoder.weight.data[0, 0] = float("1e-45")  # a denormal survives
    save_checkpoint(tmp_path / "ck", model, {"model": {"width": 16}}, {"step": 3})
    state, config = load_model_weights(tmp_path / "ck")
    assert config == {"model": {"width": 16}}
    own = model.state_dict()
    assert set(state) == set(own)
    for k, v in own.items():
        assert torch.equal(state[k], v) and state[k].dtype == v.dtype, k
    assert state["tied.weight"] is state["tied_again.weight"]
    fresh = ToyModel()
    fresh.load_state_dict(state)
    assert fresh.tied.weight is fresh.tied_again.weight
    assert load_trainer_state(tmp_path / "ck") == {"step": 3}


def test_periodic_checkpoint_and_last_share_their_files(tmp_path):
    trainer = make_trainer(tmp_path / "run", steps=2)
    trainer.fit()
    trainer._checkpoint()  # what the loop does every checkpoint_every steps
    step, last = tmp_path / "run" / "checkpoints" / "step-2", tmp_path / "run" / "last"
    for name in ("model.safetensors", "trainer_state.pt", "manifest.json", "config.json"):
        assert (last / name).stat().st_ino == (step / name).stat().st_ino, name
    assert load_trainer_state(last)["step"] == 2
    assert not list((tmp_path / "run").glob(".last.*"))  # no temporaries left


def test_copy_checkpoint_copies_where_hard_links_fail(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "a", ToyModel(), {"k": 1}, {"step": 5})
    save_checkpoint(tmp_path / "b", ToyModel(), {"k": 2}, {"step": 9})  # replaced below

    def no_links(*_args):
        raise OSError("hard links not supported")

    monkeypatch.setattr("repalign.train.checkpoint.os.link", no_links)
    copy_checkpoint(tmp_path / "a", tmp_path / "b")
    assert load_trainer_state(tmp_path / "b") == {"step": 5}
    assert load_model_weights(tmp_path / "b")[1] == {"k": 1}
    assert (tmp_path / "b" / "model.safetensors").stat().st_ino != (
        tmp_path / "a" / "model.safetensors"
    ).stat().st_ino


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002 (global RNG on purpose)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]  # noqa: NPY002 (global RNG on purpose)
    assert torch.equal(torch.rand(1), expected[2])


def test_resume_continues_identically(tmp_path):
    full = make_trainer(tmp_path / "full", steps=8)
    full.fit()

    first = make_trainer(tmp_path / "part", steps=8, checkpoint_every=3)
    first.loop.steps = 5  # stop part-way; step-3 checkpoint is what we resume from
    first.fit()
    ck = tmp_path / "part" / "checkpoints" / "step-3"
    assert ck.is_dir()
    # make RUN/last the step-3 checkpoint, as if the process died after saving it
    import shutil

    shutil.rmtree(tmp_path / "part" / "last")
    shutil.copytree(ck, tmp_path / "part" / "last")
    resumed = make_trainer(tmp_path / "part", steps=8)
    torch.manual_seed(1234)  # a resumed process starts with unrelated RNG state
    resumed.fit(resume=True)

    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")
    for (name, p), q in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    for a, b in zip(full.optimizer.state.values(), resumed.optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "ck", ToyModel(), {}, {"step": 1})
    weights = tmp_path / "ck" / "model.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model_weights(tmp_path / "ck")
    weights.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model_weights(tmp_path / "ck")
    weights.write_bytes(original)
    (tmp_path / "ck" / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_trainer_state(tmp_path / "ck")


def test_not_a_checkpoint_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_weights(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="RUN_DIR/last"):
        load_model_weights(tmp_path / "empty")


def test_mismatched_checkpoint_gives_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, steps=2)
    trainer.run_config = {"model": {"width": 16}}
    trainer.fit()
    other = make_trainer(tmp_path, steps=4)
    other.run_config = {"model": {"width": 32}}
    with pytest.raises(CheckpointError, match=r"width: 16 \(checkpoint\) != 32 \(now\)"):
        other.fit(resume=True)

    class Wider(ToyModel):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(16, 2)

    from repalign.train.checkpoint import load_into

    state, _ = load_model_weights(tmp_path / "last")
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch 2 .*head.weight: checkpoint \(1, 16\) vs model \(2, 16\)",
    ):
        load_into(Wider(), state, source="x")
