"""The one check every writer of a feature or score file runs on its ``--out``.

``extract``, ``merge``, ``compare`` and the library writers behind them
(:func:`repalign.extract.run.extract`, :func:`repalign.store.merge.write_merged`,
:func:`repalign.store.scores.write_scores`) call :func:`check_output_file` before any
work, so they agree on what may be written where:

- a directory, or a path whose folder does not exist, is refused;
- a name without a netCDF ending (``.nc``) is refused: it is most often an input
  (a ``captions.tsv``) or a figure name given by mistake;
- an existing file is replaced only with ``overwrite`` (or continued with ``resume``,
  where the writer can resume; both at once are refused);
- an input of the command (after glob expansion and ``resolve()``, so also through
  a symlink or a hard link) is never written over, not even with ``overwrite``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from repalign.store.paths import is_pattern

#: file name endings of a netCDF file (feature and score files)
NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf")
#: endings of the data files repalign reads (``--data``): a sign that an input was given as --out
DATA_SUFFIXES = (".tsv", ".jsonl", ".json", ".csv", ".txt")


@dataclass(frozen=True)
class OutputKind:
    """What a writer writes, for the messages: its noun, an example name, a hint."""

    noun: str  # "feature file"
    example: str  # a good file name, "features.nc"
    hint: str = ""  # said after a wrong ending, unless the name looks like a data file


FEATURES = OutputKind("feature file", "features.nc")
SCORES = OutputKind("score file", "scores.nc", "figures come from `repalign plot`")


def check_output_file(
    path: str | os.PathLike[str],
    kind: OutputKind,
    *,
    overwrite: bool,
    resume: bool | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
    inputs_are: str = "one of the input files",
) -> Path:
    """Refuse an output path that cannot or must not be written; return it as a Path.

    Call it before any long work (loading a model, computing scores). ``resume``
    is None for a writer that cannot continue a file (its messages then offer only
    ``--overwrite``). ``inputs`` are the files the command reads (paths or glob
    patterns; patterns matching nothing are ignored, their reader reports them);
    ``inputs_are`` names them in the message (e.g. ``"the --data file"``).

    Raises ValueError (resume with overwrite, an input, a non-netCDF name),
    IsADirectoryError, FileNotFoundError (missing folder) or FileExistsError.
    """
    out = Path(path)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: pick one")
    if out.is_dir():
        raise IsADirectoryError(
            f"--out {out} is a directory; give a file path such as {out / kind.example}"
        )
    clash = _same_as_input(out, inputs)
    if clash is not None:
        via = "" if clash == out else f" ({clash})"
        raise ValueError(
            f"--out {out} is {inputs_are}{via}: an input is never written over, even with "
            f"--overwrite; write the {kind.noun} to another path such as {kind.example}"
        )
    if out.suffix.lower() not in NETCDF_SUFFIXES:
        if out.suffix.lower() in DATA_SUFFIXES:
            hint = f"{out.name} looks like a data file: did you swap an input and --out?"
        else:
            hint = kind.hint
        raise ValueError(
            f"--out {out}: a {kind.noun} is netCDF, name it with .nc (e.g. {kind.example})"
            + (f"; {hint}" if hint else "")
        )
    if not out.parent.is_dir():
        raise FileNotFoundError(
            f"the folder of --out {out} ({out.parent}) does not exist; create it first"
        )
    if out.exists() and not (overwrite or resume):
        if resume is None:
            how = "--overwrite (overwrite=True) to replace it"
        else:
            how = "--resume to continue it, --overwrite to replace it"
        raise FileExistsError(f"{out} already exists; pass {how}, or choose another --out")
    return out


def _same_as_input(out: Path, inputs: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The input that ``out`` would write over (same resolved path or same file), or None."""
    target = out.resolve()
    for item in inputs:
        text = os.fspath(item)
        # a pattern's matches, and the text itself (a file may be named "run[2].nc")
        for candidate in [text, *(glob.glob(text) if is_pattern(text) else [])]:
            path = Path(candidate)
            if path.resolve() == target or _same_file(path, out):
                return path
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one existing file (also through a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (or cannot be read): not the same file
        return False
