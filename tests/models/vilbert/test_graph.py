"""The pretraining forward traces to one graph: no host syncs, nothing that stops
``torch.compile`` (a ``.item()``, a boolean-mask index or a data-dependent shape would
break the graph)."""

from __future__ import annotations

import pytest
import torch

from repalign.train.collate import PretrainCollator
from repalign.train.objectives import PretrainModel
from repalign.train.tasks import TASKS

from .conftest import micro_config


@pytest.mark.parametrize(
    "objective",
    [{}, {"swap_negative_ratio": 0.5, "task_batch_sizes": {"mlm": 4, "mim": 2, "ap": 4}}],
    ids=["every-row", "task-batch-sizes"],
)
def test_pretraining_forward_has_no_graph_break(objective, tokenizer, samples32):
    config = micro_config(depth=2, cross_attention_layers=[1])
    model = PretrainModel(config, tasks=TASKS, **objective)
    collate = PretrainCollator(
        tokenizer, tasks=TASKS, image_size=32, patch_size=config.vision_patch_size, seed=0
    )
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(collate(samples32[:8]))
    reasons = [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1 and not reasons, reasons


HOST_READS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "nonzero")


def test_pretraining_forward_and_backward_never_read_a_value_back(
    tokenizer, samples32, monkeypatch
):
    """In eager mode too: each of these calls waits for the device (a host sync on GPU).
    transformers' BERT would ask whether the batch has padding unless given a 4-D mask."""
    config = micro_config(depth=2, cross_attention_layers=[1])
    model = PretrainModel(
        config, tasks=TASKS, swap_negative_ratio=0.5, task_batch_sizes={"mim": 2, "ap": 4}
    )
    collate = PretrainCollator(
        tokenizer, tasks=TASKS, image_size=32, patch_size=config.vision_patch_size, seed=0
    )
    batch = collate(samples32[:8])
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    loss = model(batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    monkeypatch.undo()
    assert reads == []


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tokenizer, samples32, tmp_path):
    """torch.compile (inductor, needs a C compiler; about a minute cold) of the
    pretraining forward and backward gives the eager step's losses."""
    from repalign.train.config import LoopConfig, OptimConfig
    from repalign.train.loop import Trainer

    # no dropout: compiled code draws its dropout masks from another generator
    config = micro_config(depth=2, cross_attention_layers=[1], attention_dropout=0.0)
    config.text["attention_probs_dropout_prob"] = 0.0
    config.vision["attn_drop_rate"] = 0.0
    collate = PretrainCollator(
        tokenizer, tasks=TASKS, image_size=32, patch_size=config.vision_patch_size, seed=0
    )
    batch = collate(samples32[:16])
    objective = {"swap_negative_ratio": 0.5, "task_batch_sizes": {"mim": 4, "ap": 8}}
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = PretrainModel(config, tasks=TASKS, **objective)
        trainer = Trainer(
            model,
            None,
            run_dir=tmp_path / str(compiled),
            optim=OptimConfig(grad_clip=1.0),
            loop=LoopConfig(device="cpu", compile=compiled, progress=False),
        )
        torch.manual_seed(1)
        steps = [trainer.train_step([batch])[0] for _ in range(3)]
        losses[compiled] = torch.stack([s["loss"] for s in steps])
    torch.testing.assert_close(losses[True], losses[False], atol=1e-4, rtol=1e-4)
