"""``repalign merge``: the shard files of a sharded extraction -> one feature file.

Only parses options and calls :func:`repalign.store.merge.write_merged`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from repalign.cli._errors import fail


def merge_cmd(
    shards: list[str] = typer.Argument(
        ...,
        help="Every shard file of one sharded extraction (paths or quoted globs, "
        "e.g. 'feats.shard*of4.nc'), in any order.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The merged feature file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    chunk_size: int = typer.Option(
        4096, "--chunk-size", min=1, help="Samples held in memory at a time while writing."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Merge shard files ('extract --shard K/N' or torchrun) into one feature file, by sample."""
    from repalign.store.merge import write_merged
    from repalign.store.paths import expand_paths

    try:
        paths = expand_paths(shards)
        write_merged(paths, out, overwrite=overwrite, chunk_size=chunk_size, progress=progress)
    except (ValueError, FileExistsError, FileNotFoundError, IsADirectoryError) as exc:
        raise fail(exc) from None
    Console().print(f"merged {len(paths)} shards into {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)
