import pytest
import torch

from repalign.data.synthetic import SyntheticCaptions
from repalign.train.config import PretrainConfig, load_config
from repalign.train.pretrain import TaskSampler, build, probe_alignment


@pytest.fixture(scope="module")
def parts():
    cfg = load_config(
        PretrainConfig,
        overrides=[
            "tasks=[mlm,ap,itc]",
            "task_ratios={mlm: 0.5}",
            "data.n_train=16",
            "data.n_eval=8",
        ],
    )
    return build(cfg)


def test_task_ratios_sample_tasks_in_training_only(parts):
    model, collate = parts["model"], parts["train_collate"]
    batch = collate([parts["train"][i] for i in range(4)])
    torch.manual_seed(0)
    model.train()
    with_mlm = ["mlm_loss" in model(batch) for _ in range(8)]
    assert any(with_mlm) and not all(with_mlm)
    model.eval()
    with torch.no_grad():
        assert {"mlm_loss", "ap_loss", "itc_loss"} <= set(model(batch))


def test_task_ratios_are_validated():
    with pytest.raises(ValueError, match="not selected"):
        TaskSampler(["ap"], {"mlm": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TaskSampler(["ap"], {"ap": 0.0})


def test_probes_cover_towers_and_every_fusion_layer(parts):
    vilbert = parts["model"].vilbert.eval()
    samples = list(SyntheticCaptions(12, seed=5))
    batches = [parts["eval_collate"](samples[:6]), parts["eval_collate"](samples[6:])]
    with torch.no_grad():
        scores = probe_alignment(vilbert, batches, ["cka"])
    depth = vilbert.config.depth
    assert list(scores) == ["cka_tower"] + [f"cka_fusion{i}" for i in range(depth)]
    assert all(0.0 <= v <= 1.0 for v in scores.values())
