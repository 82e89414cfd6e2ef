"""--data SPEC parsing and the three file formats (TSV captions, COCO JSON, memes jsonl)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from repalign.data.captions import UnreadableImage
from repalign.data.loading import SyntheticSpec, load_dataset, parse_synthetic
from repalign.data.synthetic import SyntheticCaptions


def _img(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_synthetic_specs():
    assert len(load_dataset("synthetic")) == 512
    ds = load_dataset("synthetic:7")
    assert isinstance(ds, SyntheticCaptions) and len(ds) == 7 and ds.seed == 0
    assert load_dataset("synthetic:3:5")[0].sample_id == "synthetic-5-000000"
    with pytest.raises(ValueError, match="bad synthetic spec"):
        load_dataset("synthetic:many")
    assert load_dataset("synthetic:2", image_size=32)[0].image.size == (32, 32)


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("synthetic", SyntheticSpec(None, None)),
        ("synthetic:", SyntheticSpec(None, None)),
        ("synthetic:8", SyntheticSpec(8, None)),
        ("synthetic:8:3", SyntheticSpec(8, 3)),
        ("synthetic::3", SyntheticSpec(None, 3)),
        ("synthetics.tsv", None),
        ("captions.tsv", None),
    ],
)
def test_parse_synthetic(spec, parsed):
    assert parse_synthetic(spec) == parsed


@pytest.mark.parametrize(
    "spec", ["synthetic:8:0:junk", "synthetic:8:x", "synthetic:-3", "synthetic:1.5"]
)
def test_malformed_synthetic_specs_are_refused(spec):
    with pytest.raises(ValueError, match=f"bad synthetic spec {spec!r}"):
        load_dataset(spec)


def test_tsv_with_and_without_header_and_images_dir(tmp_path):
    _img(tmp_path / "pics" / "a.jpg")
    _img(tmp_path / "pics" / "b.png", 9)
    (tmp_path / "h.tsv").write_text("caption\timage\na cat\tpics/a.jpg\na dog\tpics/b.png\n")
    ds = load_dataset(str(tmp_path / "h.tsv"))
    assert [s.sample_id for s in ds] == ["0000000", "0000001"]
    assert ds[1].text == "a dog" and ds[1].image.size == (8, 8) and ds[1].image.mode == "RGB"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "n.tsv").write_text("a cat\ta.jpg\nmissing\tnope.jpg\na dog\tb.png\n")
    ds = load_dataset(str(tmp_path / "sub" / "n.tsv"), images=tmp_path / "pics")
    assert [s.sample_id for s in ds] == ["0000000", "0000002"]
    assert ds.skipped[0][0] == "0000001" and "missing image" in ds.skipped[0][1]


def test_tsv_bad_row_is_a_clear_error(tmp_path):
    (tmp_path / "bad.tsv").write_text("only a caption\n")
    with pytest.raises(ValueError, match="row 0: expected 'caption<TAB>image'"):
        load_dataset(str(tmp_path / "bad.tsv"))


def test_coco_json(tmp_path):
    _img(tmp_path / "images" / "1.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "images/1.jpg"}, {"id": 2, "file_name": "images/2.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "first"},
            {"id": 11, "image_id": 1, "caption": "second"},
            {"id": 12, "image_id": 2, "caption": "no image file"},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    ds = load_dataset(str(tmp_path / "captions.json"))
    assert [(s.sample_id, s.text) for s in ds] == [("10", "first"), ("11", "second")]
    assert ds[0].meta["image_id"] == 1 and [s for s, _ in ds.skipped] == ["12"]
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not COCO-captions style"):
        load_dataset(str(tmp_path / "other.json"))


def test_memes_jsonl(tmp_path):
    _img(tmp_path / "img" / "01.png")
    _img(tmp_path / "img" / "02.png")
    lines = [
        {"id": 42, "img": "img/01.png", "label": 1, "text": "mean meme"},
        {"id": 7, "img": "img/02.png", "text": "test split, no label"},
    ]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = load_dataset(str(tmp_path / "dev.jsonl"))
    assert [(s.sample_id, s.label) for s in ds] == [("42", 1), ("7", None)]
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="line 1"):
        load_dataset(str(tmp_path / "bad.jsonl"))


def test_corrupt_image_found_at_decode_raises_unreadable(tmp_path):
    _img(tmp_path / "ok.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "cut.png")
    raw = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "d.tsv").write_text("x\tok.png\ny\tcut.png\n")
    ds = load_dataset(str(tmp_path / "d.tsv"))
    assert len(ds) == 2  # the header parses; the pixels do not
    with pytest.raises(UnreadableImage) as exc:
        ds[1]
    assert exc.value.sample_id == "0000001"


def test_unknown_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.tsv"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset(str(tmp_path / "x.csv"))
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="cannot read captions TSV"):
        load_dataset(str(tmp_path / "bin.tsv"))


def test_tsv_urls_resolved_through_url_map(tmp_path):
    _img(tmp_path / "dl" / "0001.jpg")
    (tmp_path / "dl" / "url_map.tsv").write_text("https://x.org/a.jpg\t0001.jpg\n")
    (tmp_path / "cc.tsv").write_text("a cat\thttps://x.org/a.jpg\na dog\thttps://x.org/b.jpg\n")
    ds = load_dataset(str(tmp_path / "cc.tsv"), images=tmp_path / "dl")
    assert [s.sample_id for s in ds] == ["0000000"] and ds[0].image.size == (8, 8)
    assert ds.skipped[0][0] == "0000001" and "not downloaded" in ds.skipped[0][1]
