"""Shared fixtures: a tiny ViLBERT and synthetic batches, small enough for CI seconds."""

from __future__ import annotations

import pytest
import torch

from repalign.data.synthetic import SyntheticCaptions
from repalign.data.text_vocab import synthetic_tokenizer
from repalign.models.vilbert import preset


def micro_config(**overrides):
    """A smaller-than-tiny config: 32 wide, 1 text layer, 1 ViT block, 32x32 images."""
    kwargs = dict(
        text={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        vision={"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2},
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        depth=2,
        cross_attention_layers=[0],
    )
    kwargs.update(overrides)
    return preset("tiny", **kwargs)


@pytest.fixture(scope="session")
def tokenizer():
    return synthetic_tokenizer()


@pytest.fixture(scope="session")
def samples32():
    return list(SyntheticCaptions(32, seed=3, image_size=32))


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one intra-op thread: these models are tiny, and on a shared 2-core
    machine a second OpenMP thread that gets descheduled makes every step ~10x slower."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
