"""`repalign models | layers | extract | info` through typer's CliRunner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.store.features import open_features
from tests.extract._tiny import save_tiny_bert_dir

runner = CliRunner()
TINY_VIT = ["--vision-model", "vit_tiny_patch16_224", "--model-arg", "img_size=32",
            "--model-arg", "patch_size=8", "--model-arg", "embed_dim=32", "--model-arg", "depth=2",
            "--model-arg", "num_heads=2", "--model-arg", "num_classes=0"]  # fmt: skip


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(save_tiny_bert_dir(tmp_path_factory.mktemp("bert")))


def _ok(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def _err(args, code=2):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


def test_models_lists_builtins():
    out = _ok(["models"])
    assert "hf-text" in out and "timm-vision" in out and "bert-vit" in out


def test_layers_with_pattern(bert_dir):
    out = _ok(["layers", "hf-text", "--text-model", bert_dir, "--pattern", "text.layer.*"])
    assert "text.layer.1" in out and "encoder.layer.1" in out and "text.embeddings" not in out
    out = _ok(["layers", "bert-vit", "--text-model", bert_dir, *TINY_VIT, "-p", "concat.*"])
    assert "concat.layer.1" in out and "text.layer.1" in out  # sources shown in the path column
    assert "Did you mean 'text.layer.1'" in _err(
        ["layers", "hf-text", "--text-model", bert_dir, "-p", "text.layr.1"]
    )


def test_extract_then_info(bert_dir, tmp_path):
    out = tmp_path / "f.nc"
    args = ["extract", "--model", "bert-vit", "--text-model", bert_dir, *TINY_VIT, "--data", "synthetic:10",
            "--layers", "text.layer.*", "--layers", "re:vision\\.block\\.1|concat\\..*", "--pool", "cls",
            "--batch-size", "4", "--out", str(out), "--no-progress"]  # fmt: skip
    assert "wrote 10 samples x 5 layers" in _ok(args)
    with open_features(out) as ds:
        assert list(ds.data_vars) == ["text.layer.0", "text.layer.1", "vision.block.1",
                                      "concat.layer.0", "concat.layer.1"]  # fmt: skip
        assert ds.attrs["model"] == "bert-vit" and ds.attrs["dataset"] == "synthetic:10"
    info = _ok(["info", str(out)])
    assert "complete" in info and "concat.layer.1" in info and "bert-vit" in info
    assert "already exists" in _err(args)
    assert "wrote 10" in _ok([*args, "--overwrite"])
    assert "already complete" in _ok([*args, "--resume"])


def test_extract_limit_and_tsv(bert_dir, tmp_path):
    (tmp_path / "c.tsv").write_text("a red circle\tnone.png\n")  # hf-text reads only the caption...
    # ...but a missing image is still skipped (ids must not depend on the model)
    out = _err(["extract", "-m", "hf-text", "--text-model", bert_dir, "--data", str(tmp_path / "c.tsv"),
                "--out", str(tmp_path / "x.nc"), "--no-progress"])  # fmt: skip
    assert "no sample could be read" in out
    _ok(["extract", "-m", "hf-text", "--text-model", bert_dir, "--data", "synthetic:50", "--limit", "6",
         "--out", str(tmp_path / "l.nc"), "--no-progress"])  # fmt: skip
    with open_features(tmp_path / "l.nc") as ds:
        assert ds.sizes["sample"] == 6 and ds.attrs["complete"] == 1


def test_clear_errors(bert_dir, tmp_path):
    base = ["extract", "--data", "synthetic:4", "--out", str(tmp_path / "e.nc"), "--no-progress"]
    out = _err([*base, "--model", "hf_text"])
    assert (
        "unknown model adapter 'hf_text'" in out
        and "Did you mean 'hf-text'" in out
        and "timm-vision" in out
    )
    assert "matches no layer" in _err(
        [*base, "-m", "hf-text", "--text-model", bert_dir, "--layers", "vision.*"]
    )
    assert "does not exist" in _err(
        [*base[:1], "--data", str(tmp_path / "no.tsv"), *base[3:], "-m", "hf-text"]
    )
    assert "needs --text-model" in _err([*base, "-m", "hf-text"])
    assert "no feature file" in _err(["info", str(tmp_path / "absent.nc")])
    (tmp_path / "junk.nc").write_text("junk")
    assert "not a readable netCDF" in _err(["info", str(tmp_path / "junk.nc")])
    assert "KEY=VALUE" in _err(
        ["layers", "timm-vision", "--vision-model", "x", "--model-arg", "oops"]
    )


def _write_formats(root):
    import json

    import numpy as np
    from PIL import Image

    (root / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(
            root / "img" / f"{i}.png"
        )
    (root / "c.tsv").write_text("".join(f"caption {i}\timg/{i}.png\n" for i in range(3)))
    coco = {"images": [{"id": i, "file_name": f"img/{i}.png"} for i in range(3)],
            "annotations": [{"id": 100 + i, "image_id": i, "caption": f"caption {i}"} for i in range(3)]}  # fmt: skip
    (root / "c.json").write_text(json.dumps(coco))
    (root / "m.jsonl").write_text("".join(json.dumps({"id": i, "img": f"img/{i}.png", "label": i % 2,
                                                      "text": f"meme {i}"}) + "\n" for i in range(3)))  # fmt: skip


@pytest.mark.parametrize(("data", "ids"), [("c.tsv", ["0000000", "0000001", "0000002"]),
                                           ("c.json", ["100", "101", "102"]),
                                           ("m.jsonl", ["0", "1", "2"])])  # fmt: skip
def test_extract_each_data_format(tmp_path, data, ids):
    _write_formats(tmp_path)
    out = tmp_path / "f.nc"
    _ok(["extract", "-m", "timm-vision", *TINY_VIT, "--data", str(tmp_path / data), "--pool", "cls",
         "--out", str(out), "--no-progress"])  # fmt: skip
    with open_features(out) as ds:
        assert list(ds.sample_id.values) == ids and ds.attrs["complete"] == 1


def test_torchrun_ranks_write_shards_that_merge(bert_dir, tmp_path, monkeypatch):
    base = ["extract", "-m", "hf-text", "--text-model", bert_dir, "--data", "synthetic:9", "-b", "4",
            "--out", str(tmp_path / "f.nc"), "--no-progress"]  # fmt: skip
    for rank in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        _ok(base)
    monkeypatch.delenv("WORLD_SIZE")
    shards = [str(tmp_path / f"f.shard{r}of2.nc") for r in range(2)]
    assert "merged 2 shards" in _ok(["merge", *shards, "--out", str(tmp_path / "m.nc")])
    with open_features(tmp_path / "m.nc") as ds:
        assert list(ds.sample_id.values) == [f"synthetic-0-{i:06d}" for i in range(9)]
    assert "already exists" in _err(["merge", *shards, "--out", str(tmp_path / "m.nc")])
    assert "every shard" in _err(["merge", shards[0], "--out", str(tmp_path / "n.nc")])


def test_malformed_torchrun_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    out = _err(["extract", "-m", "hf-text", "--data", "synthetic:4", "--out", str(tmp_path / "f.nc"),
                "--no-progress"])  # fmt: skip
    assert "WORLD_SIZE='two' is not an integer" in out
    assert not (tmp_path / "f.nc").exists()


def test_torchrun_rank_gets_its_shard_file_and_gpu(tmp_path, monkeypatch):
    from repalign.cli.extract_cmd import _torchrun_shard

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = tmp_path / "f.nc"
    assert _torchrun_shard(None, out, "cuda") == ("3/4", tmp_path / "f.shard3of4.nc", "cuda:1")
    assert _torchrun_shard(None, out, "cpu") == ("3/4", tmp_path / "f.shard3of4.nc", "cpu")
    assert _torchrun_shard("0/2", out, "cuda") == ("0/2", out, "cuda")  # explicit --shard wins
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert _torchrun_shard(None, out, "cuda") == (None, out, "cuda")


def test_info_flags_an_incomplete_file(tmp_path):
    import numpy as np

    from repalign.models.base import LayerInfo
    from repalign.store.features import FeatureFile

    feats = {"text.layer.0": np.ones((2, 3), dtype=np.float32)}
    layers = [LayerInfo("text.layer.0", "encoder.layer.0", "text", 1, 1.0)]
    attrs = {"model": "toy", "n_total": 10, "skipped_json": '[["x7", "missing image x.png"]]'}
    with FeatureFile.create(tmp_path / "p.nc", layers, feats, pooling="mean", attrs=attrs) as f:
        f.append(["a", "b"], feats, progress={"skipped_json": '[["x7", "missing image x.png"]]'})
    out = " ".join(_ok(["info", str(tmp_path / "p.nc")]).split())
    assert "2 samples of 10" in out and "INCOMPLETE" in out and "x7 (missing image x.png)" in out
