"""Ctrl-C and SIGTERM stop a run after the step in flight, save RUN/last, and resume identically."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from repalign.train.checkpoint import load_trainer_state
from repalign.train.interrupt import RunInterrupted, StopOnSignal, ignore_stop_signals
from tests._signals import default_signals_in_child
from tests.train.test_loop import make_trainer, train_losses

pytestmark = pytest.mark.usefixtures("default_stop_signals")


def _signal_during_step(trainer, step, *signals):
    """Raise ``signals`` in this process while ``trainer`` computes step ``step`` (1-based)."""
    real = trainer.train_step

    def train_step(micro):
        out = real(micro)
        if trainer.step == step - 1:
            for sig in signals:
                signal.raise_signal(sig)
        return out

    trainer.train_step = train_step


def test_first_signal_only_sets_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.received == "SIGTERM"
        signal.raise_signal(signal.SIGTERM)  # a repeated SIGTERM changes nothing
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C aborts
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_the_step_and_resume_matches_uninterrupted(tmp_path, sig):
    full = make_trainer(tmp_path / "full", steps=8, log_every=2)
    full.fit()

    part = make_trainer(tmp_path / "part", steps=8, log_every=2)
    _signal_during_step(part, 3, sig)
    with pytest.raises(RunInterrupted) as info:
        part.fit()
    assert info.value.step == 3 and info.value.exit_code == 128 + sig
    assert load_trainer_state(tmp_path / "part" / "last")["step"] == 3
    logged = [
        json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in logged if r["split"] == "train"] == [2, 3]  # step 3 was logged
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    resumed = make_trainer(tmp_path / "part", steps=8, log_every=2)
    torch.manual_seed(1234)  # a resumed process starts with unrelated RNG state
    resumed.fit(resume=True)
    for (name, p), q in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    # the uninterrupted run logged steps 2, 4, 6, 8; the interrupted one 2, 3, then 4 (mean of
    # step 4 alone), 6, 8: the records after the stop at an even step are the same
    full_losses, part_losses = train_losses(tmp_path / "full"), train_losses(tmp_path / "part")
    assert part_losses[0] == full_losses[0] and part_losses[-2:] == full_losses[-2:]


def test_second_ctrl_c_aborts_without_saving(tmp_path):
    trainer = make_trainer(tmp_path, steps=8)
    _signal_during_step(trainer, 3, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit()
    assert not isinstance(info.value, RunInterrupted)
    assert not (tmp_path / "last").exists()  # a half-applied step is never saved


def test_an_ignored_signal_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a nohup job
    try:
        with StopOnSignal():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before)


def test_data_loader_workers_leave_stop_signals_to_the_main_process():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in before)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_cli_sigterm_saves_and_exits_143(tmp_path):
    """A scheduler's SIGTERM to `repalign train pretrain`: checkpoint, message, exit 143."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "repalign", "train", "pretrain", "--preset", "tiny",
        "--data", "synthetic:64", "--tasks", "ap,itc", "--steps", "100000", "--batch-size", "8",
        "--out", str(run), "loop.log_every=1", "loop.progress=false", "loop.threads=1",
        "loop.eval_every=0", "data.n_eval=8",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_signals_in_child
    )
    log = run / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count('"train"') >= 2):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no training steps logged in 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "--resume" in err and "SIGTERM" in err
    step = load_trainer_state(run / "last")["step"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert step >= 2 and max(r["step"] for r in records) == step


def test_signal_during_the_final_evaluation_stops_it_and_resume_redoes_it(tmp_path):
    trainer = make_trainer(tmp_path, steps=4)
    calls = []
    evaluate = trainer.periodic[0]

    def interrupted_eval(model):
        calls.append(trainer.step)
        if len(calls) == 1 and trainer.step == 4:  # the final evaluation, first time
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("the signal should have stopped the evaluation")
        return {"eval_mae": torch.tensor(0.5)}

    trainer.periodic[0] = type(evaluate)(evaluate.split, evaluate.every, interrupted_eval)
    with pytest.raises(RunInterrupted) as info:
        trainer.fit()
    assert info.value.step == 4 and info.value.signal_name == "SIGTERM"
    assert load_trainer_state(tmp_path / "last")["step"] == 4  # every step saved
    assert trainer.fit(resume=True) == {"eval_mae": 0.5}  # nothing to train: evaluates
    assert calls == [4, 4]


def test_signal_during_the_last_step_skips_the_final_evaluation(tmp_path):
    trainer = make_trainer(tmp_path, steps=4)
    _signal_during_step(trainer, 4, signal.SIGINT)
    with pytest.raises(RunInterrupted) as info:
        trainer.fit()
    assert info.value.step == 4
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert not [r for r in records if r["split"] == "eval" and r["step"] == 4]
