"""The pretraining forward traces to one graph: no host syncs, nothing that stops
``torch.compile`` (a ``.item()``, a boolean-mask index or a data-dependent shape would
break the graph)."""

from __future__ import annotations

import pytest
import torch

from repalign.train.objectives import TASKS, PretrainCollator, PretrainModel

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
