import json

import pytest
import torch

from repalign.train.batches import BatchStream
from repalign.train.config import OptimConfig
from repalign.train.loop import Periodic, Trainer
from repalign.train.schedule import lr_factor, param_groups
from tests.train._toy import ToyData, ToyModel, toy_collate, toy_configs


def make_trainer(tmp_path, steps=6, **loop):
    torch.manual_seed(0)
    model = ToyModel()
    optim, loop_cfg = toy_configs(steps, **loop)
    stream = BatchStream(ToyData(64), 8, toy_collate, seed=loop_cfg.seed)
    evaluate = Periodic(
        "eval", 5, lambda m: {"eval_mae": m({"x": torch.eye(4), "y": torch.zeros(4)})["mae"]}
    )
    return Trainer(model, stream, run_dir=tmp_path, optim=optim, loop=loop_cfg, periodic=[evaluate])


def train_losses(run_dir):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


def test_loss_decreases_on_toy_problem(tmp_path):
    trainer = make_trainer(tmp_path, steps=100)
    trainer.fit()
    losses = train_losses(tmp_path)
    assert len(losses) == 100
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5
    evals = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["split"] == "eval"] == list(range(5, 100, 5)) + [100]
    assert (tmp_path / "last" / "model.safetensors").is_file()
    assert (tmp_path / "log.csv").read_text().startswith("step,split,loss")


def test_batches_do_not_depend_on_workers():
    stream = BatchStream(ToyData(64), 8, toy_collate, seed=3)
    a, b = stream[5], stream[5]
    assert torch.equal(a["x"], b["x"])
    assert not torch.equal(stream[5]["x"], stream[6]["x"])
    # epochs wrap around with a different order
    first, next_epoch = stream[0]["index"], stream[stream.batches_per_epoch]["index"]
    assert not torch.equal(first, next_epoch)


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    """Accumulation averages equal-sized micro-losses: the same step as the big batch."""
    torch.manual_seed(0)
    big, small = ToyModel(), ToyModel()
    small.load_state_dict(big.state_dict())
    big.dropout.p = small.dropout.p = 0.0
    batch = toy_collate(list(range(8)))
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    optim, loop = toy_configs(1)
    tb = Trainer(big, None, run_dir=tmp_path / "a", optim=optim, loop=loop)
    ts = Trainer(small, None, run_dir=tmp_path / "b", optim=optim, loop=loop)
    tb.train_step([batch])
    ts.train_step(halves)
    for p, q in zip(big.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_lr_schedule_warmup_then_decay():
    optim = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, optim, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=0.01)
    linear = OptimConfig(lr=1.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(50, linear, 100) == pytest.approx(0.5)


def test_pretrained_prefixes_get_scaled_lr_and_norms_no_decay():
    model = ToyModel()
    groups = param_groups(model, OptimConfig(lr=1e-3, weight_decay=0.1, pretrained_lr_scale=0.1))
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.encoder.weight)]["lr"] == pytest.approx(1e-4)
    assert by_id[id(model.head.weight)]["lr"] == pytest.approx(1e-3)
    assert by_id[id(model.norm.weight)]["weight_decay"] == 0.0
    assert by_id[id(model.head.bias)]["weight_decay"] == 0.0
    assert by_id[id(model.head.weight)]["weight_decay"] == 0.1
    # a tied parameter appears once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, steps=3)
    trainer.optim_cfg.lr = 1e30
    trainer.optim_cfg.grad_clip = None
    for g in trainer.optimizer.param_groups:
        g["lr"] = 1e30
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        trainer.fit()


@pytest.mark.parametrize(("mode", "marks"), [("default", 0), ("reduce-overhead", 3)])
def test_compile_mode_reaches_torch_compile_and_cuda_graph_steps_are_marked(
    tmp_path, monkeypatch, mode, marks
):
    seen, marked = [], []

    def fake_compile(module, mode=None):
        seen.append(mode)
        return module  # eager: the loop's own behaviour is what is tested

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marked.append(1))
    make_trainer(tmp_path, steps=3, compile=True, compile_mode=mode).fit()
    assert seen == [None if mode == "default" else mode]
    assert len(marked) == marks


def test_an_unknown_compile_mode_is_refused():
    from repalign.train.config import LoopConfig

    with pytest.raises(ValueError, match="not a torch.compile mode; choose one of default"):
        LoopConfig(compile_mode="fast")
