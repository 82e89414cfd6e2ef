"""repalign.distributed: helpers alone and in a 2-process gloo group (torch.multiprocessing)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from repalign import distributed
from repalign.train.batches import BatchStream


def test_shard_range_covers_everything_once():
    for n in (0, 1, 7, 22, 100):
        for world in (1, 2, 3, 8):
            parts = [distributed.shard_range(n, r, world) for r in range(world)]
            assert [i for lo, hi in parts for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1
    with pytest.raises(ValueError, match="rank < world_size"):
        distributed.shard_range(10, 2, 2)


def test_single_process_defaults(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.env() == distributed.DistEnv(0, 0, 1)
    assert not distributed.launched_by_torchrun() and distributed.is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    before = x.detach().clone()
    mean = distributed.all_reduce_mean(x)
    mean += 1  # "a detached copy": never the caller's tensor
    assert not mean.requires_grad and torch.equal(x.detach(), before)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.get_rank() == 1 and not distributed.is_main_process()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="outside 0..WORLD_SIZE-1"):
        distributed.env()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, r"WORLD_SIZE='two' is not an integer.*torchrun"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x"}, r"LOCAL_RANK='x' is not an integer"),
        ({"WORLD_SIZE": "0"}, r"WORLD_SIZE=0.*at least 1"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, r"LOCAL_RANK=-1.*>= 0"),
    ],
)
def test_malformed_environment_names_the_variable(monkeypatch, env, match):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        distributed.env()


def test_sharded_stream_splits_each_global_batch():
    stream = BatchStream(list(range(50)), 8, collate=lambda s: torch.tensor(s), seed=3)
    shards = [distributed.ShardedBatchStream(stream, r, 2) for r in range(2)]
    for k in (0, 1, 6, 7, 13):  # 6 batches per epoch: 6, 7, 13 are later epochs
        parts = [s[k] for s in shards]
        assert [len(p) for p in parts] == [4, 4]
        assert sorted(torch.cat(parts).tolist()) == sorted(stream[k].tolist())
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.ShardedBatchStream(stream, 0, 3)
    for rank, world in ((0, 0), (2, 2), (-1, 2)):
        with pytest.raises(ValueError, match="rank < world_size"):
            distributed.ShardedBatchStream(stream, rank, world)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
         "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    )  # fmt: skip
    torch.set_num_threads(1)
    distributed.init_from_env("cpu", timeout_s=60)
    try:
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = distributed.all_gather_with_grad(x)  # (4, 3): rank 0's rows, then rank 1's
        weights = torch.arange(12.0).reshape(4, 3)
        (gathered * weights).sum().backward()  # the same loss on every rank
        out[rank] = {
            "gathered": gathered.detach().numpy(),
            "grad": x.grad.numpy(),
            "mean": float(distributed.all_reduce_mean(torch.tensor(float(rank)))),
            "flag": distributed.broadcast_flag(rank == 0),
            "ints": distributed.all_gather(torch.tensor([rank * 10])).tolist(),
        }
    finally:
        distributed.destroy()


def test_collectives_in_a_two_process_gloo_group():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        out = dict(out)
    weights = np.arange(12.0).reshape(4, 3)
    for rank in range(2):
        r = out[rank]
        np.testing.assert_array_equal(
            r["gathered"], np.repeat([[1.0], [2.0]], 2, axis=0) * np.ones((4, 3))
        )
        # both ranks' losses reach this rank's rows: gradient = 2 x its block of weights
        np.testing.assert_array_equal(r["grad"], 2 * weights[2 * rank : 2 * rank + 2])
        assert r["mean"] == 0.5 and r["flag"] is True and r["ints"] == [0, 10]


def _trainer_worker(rank: int, world: int, port: int, run_dir: str, out: dict) -> None:
    """A toy Trainer run under DDP with gradient accumulation and early stopping."""
    from repalign.train.loop import Periodic, Trainer, seed_everything
    from tests.train._toy import ToyData, ToyModel, toy_collate, toy_configs

    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
         "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    )  # fmt: skip
    seed_everything(rank)  # different initial weights: DDP must broadcast rank 0's
    optim, loop = toy_configs(steps=10, grad_accum=2, device="cpu", threads=1)
    trainer = Trainer(
        ToyModel(),
        BatchStream(ToyData(64), 8, toy_collate, seed=0),
        run_dir=run_dir,
        optim=optim,
        loop=loop,
        periodic=[Periodic("eval", 2, lambda m: {"score": 1.0})],  # never improves
        monitor="score",
        patience=1,
    )
    trainer.fit()
    out[rank] = {
        "step": trainer.step,
        "weights": {k: v.detach().clone().numpy() for k, v in trainer.model.state_dict().items()},
    }


def test_trainer_under_ddp_keeps_ranks_together(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_trainer_worker, args=(2, _free_port(), str(tmp_path), out), nprocs=2, join=True)
        out = dict(out)
    # rank 0 saw no improvement at step 4 and stopped; rank 1 stopped with it (no hang)
    assert out[0]["step"] == out[1]["step"] == 4
    for name, w in out[0]["weights"].items():
        np.testing.assert_array_equal(w, out[1]["weights"][name], err_msg=name)
    records = [line for line in (tmp_path / "log.jsonl").read_text().splitlines() if line]
    assert len(records) == 4 + 2 + 1  # 4 train steps, 2 evals, final eval: written once
    assert (tmp_path / "best").is_dir() and (tmp_path / "last").is_dir()
