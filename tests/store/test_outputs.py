"""check_output_file: the one --out check of extract, merge and compare (and their library calls).

The end-to-end cases at the bottom each wrote over a file before the writers shared it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import netCDF4
import pytest
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.store.outputs import FEATURES, SCORES, check_output_file
from tests.store._feature_files import write_features

runner = CliRunner()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _err(*args: object) -> str:
    """Run the CLI, expect a user error (exit 2, no traceback); its message on one line."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output, result.output
    return " ".join(result.output.split())


def _shards(folder: Path, n: int = 2, per: int = 8) -> list[Path]:
    """``n`` complete shard files of one (fake) extraction: what compare and merge accept."""
    paths = []
    for k in range(n):
        ids = [f"s{k * per + i:04d}" for i in range(per)]
        path = write_features(folder / f"f.shard{k}of{n}.nc", n=per, ids=ids, seed=k)
        with netCDF4.Dataset(path, "a") as nc:
            nc.setncatts({"shard": f"{k}/{n}", "n_total": per, "next_index": (k + 1) * per,
                          "skipped_json": "[]", "dataset": "toy"})  # fmt: skip
        paths.append(path)
    return paths


# ------------------------------------------------------------------ the rules, one by one


def test_a_new_netcdf_path_in_an_existing_folder_is_returned(tmp_path):
    for suffix in (".nc", ".NC", ".nc4", ".cdf"):
        out = tmp_path / f"f{suffix}"
        assert check_output_file(str(out), FEATURES, overwrite=False) == out


def test_a_directory_is_refused_even_with_overwrite(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a directory; give a file path such as .*\.nc"):
        check_output_file(tmp_path, SCORES, overwrite=True)


def test_a_missing_folder_is_refused_with_create_it_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\(.*new\) does not exist; create it first"):
        check_output_file(tmp_path / "new" / "s.nc", SCORES, overwrite=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("kind", "name", "hint"),
    [
        (FEATURES, "feats.tsv", "looks like a data file"),
        (FEATURES, "feats.h5", "a feature file is netCDF"),
        (FEATURES, "feats", "a feature file is netCDF"),
        (SCORES, "cka.png", "figures come from `repalign plot`"),
        (SCORES, "captions.jsonl", "looks like a data file"),
    ],
)
def test_a_name_without_a_netcdf_ending_is_refused(tmp_path, kind, name, hint):
    with pytest.raises(ValueError, match=r"name it with \.nc") as info:
        check_output_file(tmp_path / name, kind, overwrite=True)
    assert hint in str(info.value)


def test_an_existing_file_needs_overwrite_or_resume(tmp_path):
    out = write_features(tmp_path / "f.nc", n=4)
    with pytest.raises(FileExistsError, match=r"already exists; pass --overwrite") as info:
        check_output_file(out, SCORES, overwrite=False)
    assert "--resume" not in str(info.value)  # the writer cannot resume: not offered
    with pytest.raises(FileExistsError, match=r"--resume to continue it, --overwrite"):
        check_output_file(out, FEATURES, overwrite=False, resume=False)
    assert check_output_file(out, FEATURES, overwrite=True) == out
    assert check_output_file(out, FEATURES, overwrite=False, resume=True) == out
    with pytest.raises(ValueError, match="exclude each other"):
        check_output_file(out, FEATURES, overwrite=True, resume=True)


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_input_is_refused_even_with_overwrite(tmp_path, overwrite):
    feats = write_features(tmp_path / "a.nc", n=4)
    with pytest.raises(ValueError, match="is one of the feature files.*even with --overwrite"):
        check_output_file(feats, SCORES, overwrite=overwrite, inputs=[tmp_path / "b.nc", feats],
                          inputs_are="one of the feature files")  # fmt: skip


def test_an_input_is_found_through_a_glob_a_symlink_and_a_hard_link(tmp_path, monkeypatch):
    shards = _shards(tmp_path)
    pattern = str(tmp_path / "f.shard*of2.nc")
    with pytest.raises(ValueError, match="one of the input files"):
        check_output_file(shards[1], FEATURES, overwrite=True, inputs=[pattern])
    (tmp_path / "link.nc").symlink_to(shards[0])
    with pytest.raises(ValueError, match=r"link\.nc is one of the input files \(.*shard0of2"):
        check_output_file(tmp_path / "link.nc", FEATURES, overwrite=True, inputs=[pattern])
    os.link(shards[1], tmp_path / "hard.nc")
    with pytest.raises(ValueError, match="one of the input files"):
        check_output_file(tmp_path / "hard.nc", FEATURES, overwrite=True, inputs=shards)
    # relative and absolute spellings of one path are one path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="one of the input files"):
        check_output_file("f.shard0of2.nc", FEATURES, overwrite=True, inputs=[shards[0]])
    # a pattern matching nothing is left to its reader; other paths pass
    assert check_output_file(tmp_path / "m.nc", FEATURES, overwrite=False,
                             inputs=[pattern, str(tmp_path / "none*.nc")]) == tmp_path / "m.nc"  # fmt: skip


# ------------------------------------------------------------------ the holes, end to end


def test_merge_never_writes_over_a_data_file(tmp_path):
    """Was: merge checked no ending, so --overwrite replaced captions.tsv with the merge."""
    _shards(tmp_path)
    data = tmp_path / "captions.tsv"
    data.write_text("a red square\tred.png\n")
    before = _digest(data)
    pattern = str(tmp_path / "f.shard*.nc")
    msg = _err("merge", pattern, "--out", data, "--overwrite", "--no-progress")
    assert "name it with .nc" in msg and "looks like a data file" in msg
    assert _digest(data) == before


def test_write_merged_refuses_a_non_netcdf_name_and_a_shard_through_a_link(tmp_path):
    from repalign.store.merge import write_merged

    shards = _shards(tmp_path)
    with pytest.raises(ValueError, match=r"name it with \.nc"):
        write_merged(shards, tmp_path / "merged.h5", progress=False)
    (tmp_path / "link.nc").symlink_to(shards[1])
    before = _digest(shards[1])
    with pytest.raises(ValueError, match="one of the shards"):
        write_merged(str(tmp_path / "f.shard*.nc"), tmp_path / "link.nc", overwrite=True)
    assert _digest(shards[1]) == before
    with pytest.raises(FileNotFoundError, match="create it first"):
        write_merged(shards, tmp_path / "no" / "m.nc", progress=False)


def test_compare_never_writes_over_a_globbed_input(tmp_path):
    """Was: compare compared --out with the literal arguments only, so a shard of a glob
    given as input was replaced by the scores."""
    shards = _shards(tmp_path)
    before = _digest(shards[0])
    msg = _err("compare", tmp_path / "f.shard*of2.nc", "--out", shards[0], "--overwrite")
    assert "is one of the feature files being compared" in msg
    assert _digest(shards[0]) == before


def test_compare_refuses_a_missing_out_folder_before_computing(tmp_path):
    feats = write_features(tmp_path / "a.nc", n=8)
    msg = _err("compare", feats, "--out", tmp_path / "typo" / "s.nc")
    assert "does not exist; create it first" in msg
    assert not (tmp_path / "typo").exists()


def test_write_scores_never_writes_over_the_feature_files_it_was_computed_from(tmp_path):
    """Was: a library caller could replace a feature file with its own scores."""
    from repalign.compare import compare
    from repalign.store.scores import write_scores

    feats = write_features(tmp_path / "a.nc", n=8)
    scores = compare([feats], ["cka"], progress=False)
    (tmp_path / "alias.nc").symlink_to(feats)
    before = _digest(feats)
    for out in (feats, tmp_path / "alias.nc"):
        with pytest.raises(ValueError, match="one of the feature files the scores come from"):
            write_scores(scores, out, overwrite=True)
    assert _digest(feats) == before
    assert write_scores(scores, tmp_path / "s.nc").exists()


def test_extract_refuses_a_non_netcdf_name_before_loading_a_model(tmp_path):
    """Was: extract refused only data endings, so --out feats.h5 wrote a netCDF file
    named .h5 (and library calls checked no ending at all)."""
    from repalign.data.synthetic import SyntheticCaptions
    from repalign.extract.run import extract

    msg = _err("extract", "--model", "no-such-adapter", "--data", "synthetic:4",
               "--out", tmp_path / "feats.h5")  # fmt: skip
    assert "a feature file is netCDF, name it with .nc" in msg
    with pytest.raises(ValueError, match=r"name it with \.nc"):
        extract(None, SyntheticCaptions(4), tmp_path / "feats.h5", progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "feats.h5").exists()
