"""``repalign models``, ``layers``, ``extract`` and ``info``: adapters, layers, feature files.

This module only parses options, builds objects and calls the library
(:mod:`repalign.models`, :mod:`repalign.data.loading`, :mod:`repalign.extract.run`,
:mod:`repalign.store.features`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from repalign.cli._errors import fail, stderr

log = logging.getLogger(__name__)


def _parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON when they parse (``2``, ``true``), else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--model-arg takes KEY=VALUE (e.g. img_size=64), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _load_adapter(
    model: str,
    ckpt: str | None,
    text_model: str | None,
    vision_model: str | None,
    model_args: list[str] | None,
    max_length: int | None = None,
):
    from repalign.models import get_adapter
    from repalign.train.checkpoint import CheckpointError

    try:
        cls = get_adapter(model)
    except KeyError as exc:
        raise fail(str(exc.args[0])) from None
    options = _parse_model_args(model_args)
    if max_length is not None and model in ("hf-text", "bert-vit"):
        options["max_length"] = max_length
    try:
        return cls.load(ckpt=ckpt, text_model=text_model, vision_model=vision_model, **options)
    except (ValueError, FileNotFoundError, TypeError, CheckpointError) as exc:
        hint = ""
        if isinstance(exc, TypeError) and model_args:  # e.g. depth=abc reaching timm's arithmetic
            hint = f" (check the --model-arg values: {', '.join(model_args)})"
        raise fail(f"cannot load model {model!r}: {exc}{hint}") from None


_CKPT = typer.Option(
    None,
    "--ckpt",
    help="Checkpoint: a repalign run/checkpoint dir, a model dir, or a weights file.",
)
_TEXT = typer.Option(
    None, "--text-model", help="Text encoder: local transformers directory or name."
)
_VISION = typer.Option(
    None, "--vision-model", help="Vision encoder: timm model name or timm-style directory."
)
_MARGS = typer.Option(
    None,
    "--model-arg",
    help="Extra model construction option KEY=VALUE (repeatable), e.g. img_size=64.",
)


def models() -> None:
    """List the model adapters (built-in and from installed plug-ins)."""
    from repalign.models import get_adapter, list_adapters

    table = Table(title="repalign model adapters")
    table.add_column("name")
    table.add_column("description")
    table.add_column("defined in")
    for name in list_adapters():
        cls = get_adapter(name)
        table.add_row(name, cls.description, cls.__module__)
    Console().print(table)


def layers(
    model: str = typer.Argument(..., help="Adapter name (see `repalign models`)."),
    ckpt: str | None = _CKPT,
    text_model: str | None = _TEXT,
    vision_model: str | None = _VISION,
    model_arg: list[str] | None = _MARGS,
    pattern: list[str] | None = typer.Option(
        None, "--pattern", "-p", help="Only layers matching (name, glob or re:REGEX)."
    ),
) -> None:
    """List a model's layers: canonical name, module path, stream and depth."""
    from repalign.extract.hooks import select_layers

    adapter = _load_adapter(model, ckpt, text_model, vision_model, model_arg)
    try:
        chosen = select_layers(adapter.layers(), pattern)
    except ValueError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"layers of {model}")
    for col in ("name", "module path", "stream", "depth", "relative depth"):
        table.add_column(col)
    for info in chosen:
        path = info.module_path or "concat(" + ", ".join(info.sources) + ")"
        table.add_row(info.name, path, info.stream, str(info.depth), f"{info.relative_depth:.3f}")
    Console(width=200).print(table)


def extract(
    model: str = typer.Option(..., "--model", "-m", help="Adapter name (see `repalign models`)."),
    data: str = typer.Option(
        ..., "--data", "-d", help="path.tsv | path.jsonl | path.json (COCO) | synthetic[:N]."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Feature file to write (netCDF, .nc)."),
    ckpt: str | None = _CKPT,
    text_model: str | None = _TEXT,
    vision_model: str | None = _VISION,
    model_arg: list[str] | None = _MARGS,
    images: Path | None = typer.Option(
        None, "--images", help="Image folder (default: the data file's folder)."
    ),
    layer: list[str] | None = typer.Option(
        None, "--layers", "-l", help="Layer name, glob or re:REGEX (repeatable; default all)."
    ),
    pool: str = typer.Option("mean", "--pool", help="cls | mean | tokens."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Compute dtype: float32 | bfloat16 | float16."
    ),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    workers: int = typer.Option(
        2, "--workers", min=1, help="Threads loading and preprocessing batches ahead."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N samples."),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="K/N: extract only the K-th of N contiguous parts (merge with `repalign merge`). Set automatically under torchrun.",
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", min=1, help="Token limit for text models (default 128)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    early_stop: bool = typer.Option(
        True,
        "--early-stop/--no-early-stop",
        help="Stop the forward pass after the last requested layer.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Extract pooled layer features of MODEL on DATA into a netCDF feature file."""
    from repalign._numerics import resolve_device
    from repalign.data.loading import load_dataset
    from repalign.extract.run import ExtractConfig, shard_range
    from repalign.extract.run import extract as run_extract
    from repalign.store.outputs import FEATURES, check_output_file

    try:
        device = str(resolve_device(device))  # first: "auto" becomes cuda or cpu
        shard, out, device = _torchrun_shard(shard, out, device)
        if shard:  # checked before the model loads
            shard_range(0, shard)  # the spec, with the --shard prefix in its error
        check_output_file(out, FEATURES, overwrite=overwrite, resume=resume, inputs=[data],
                          inputs_are="the --data file")  # fmt: skip
        dataset = load_dataset(data, images=images)
    except (ValueError, FileExistsError, FileNotFoundError, IsADirectoryError) as exc:
        raise fail(str(exc)) from None
    adapter = _load_adapter(model, ckpt, text_model, vision_model, model_arg, max_length)
    config = ExtractConfig(
        layers=layer or None, pool=pool, dtype=dtype, batch_size=batch_size, workers=workers, device=device,
        limit=limit, shard=shard, resume=resume, overwrite=overwrite, stop_early=early_stop,
        progress=progress, dataset_name=data,
    )  # fmt: skip
    try:
        result = run_extract(adapter, dataset, out, config)
    except KeyboardInterrupt:
        stderr.print(
            f"interrupted; the batches written are kept: rerun with --resume to finish {out}"
        )
        raise typer.Exit(130) from None
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    if result.already_complete:
        Console().print(f"{out} is already complete ({result.n_written} samples); nothing to do")
        return
    msg = f"wrote {result.n_written} samples x {len(result.layers)} layers to {out} in {result.seconds:.1f}s"
    if result.skipped:
        msg += f"; skipped {len(result.skipped)} unreadable sample(s) (see `repalign info {out}`)"
    Console().print(msg, highlight=False)


def _score_file_info(path: Path) -> None:
    """``repalign info SCORES.nc``: what was compared, how, and the depth-matched scores."""
    from repalign.store.score_summary import matched_rows
    from repalign.store.scores import open_scores

    try:
        ds = open_scores(path)
    except ValueError as exc:
        raise fail(str(exc)) from None
    a, config = ds.attrs, json.loads(ds.attrs.get("config_json", "{}"))
    console = Console(width=200)
    console.print(f"[bold]{escape(str(path))}[/]  score file: {ds.sizes['metric']} metric(s) x "
                  f"{ds.sizes['layer_a']} x {ds.sizes['layer_b']} layer pairs, "
                  f"{a.get('n_samples', '?')} samples", highlight=False)  # fmt: skip
    prov = Table(show_header=False, title="provenance")
    files = ", ".join(json.loads(a.get("feature_files", "[]")))
    settings = ", ".join(f"{k} {config[k]}" for k in ("permutations", "bootstrap", "level",
                         "stats_pairs", "seed", "device") if k in config)  # fmt: skip
    for key, value in (("models", f"{a.get('model_a', '')} vs {a.get('model_b', '')}"),
                       ("feature files", files), ("statistics", settings),
                       ("created", a.get("created", "")),
                       ("repalign_version", a.get("repalign_version", ""))):  # fmt: skip
        prov.add_row(key, escape(str(value)))
    console.print(prov)
    for label in ds["metric"].values:
        m = ds.sel(metric=label)
        direction = "higher" if int(m["higher_is_more_similar"]) else "lower"
        table = Table(title=escape(f"{label}: depth-matched pairs ({direction} = more similar)"))
        for col in ("layer a", "layer b", "depth", "score", "interval", "null mean ± sd", "p"):
            table.add_column(col, justify="right" if col not in ("layer a", "layer b") else "left")
        for r in matched_rows(ds, str(label)):
            interval = f"[{r.ci_low:.3f}, {r.ci_high:.3f}]" if r.ci_low == r.ci_low else ""
            null = f"{r.null_mean:.3f} ± {r.null_std:.3f}" if r.null_mean == r.null_mean else ""
            p = f"{r.pvalue:.3g}" if r.pvalue == r.pvalue else ""
            table.add_row(
                escape(r.layer_a),
                escape(r.layer_b),
                f"{r.depth:.2f}",
                f"{r.score:.3f}",
                escape(interval),
                null,
                p,
            )
        console.print(table)
    console.print("draw them: repalign plot " + str(path), highlight=False)


def _torchrun_shard(shard: str | None, out: Path, device: str) -> tuple[str | None, Path, str]:
    """Under ``torchrun`` (WORLD_SIZE > 1) each rank extracts its own shard into its own file
    (``OUT.shardKofN.nc``) on its own GPU, unless ``--shard`` was given explicitly.

    Raises ValueError naming the variable when ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` is malformed.
    """
    from repalign.distributed import env, local_device

    job = env()
    if shard is not None or job.world_size <= 1:
        return shard, out, device
    rank, world = job.rank, job.world_size
    if device == "cuda":
        device = str(local_device(device))
    out = out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix}")
    log.info(
        "torchrun rank %d of %d: shard %d/%d -> %s on %s", rank, world, rank, world, out, device
    )
    return f"{rank}/{world}", out, device


def info(
    path: Path = typer.Argument(
        ..., help="A feature file (`repalign extract`) or a score file (`repalign compare`)."
    ),
) -> None:
    """Print a feature file's layers and provenance, or a score file's metrics,
    provenance and depth-matched scores."""
    from repalign.store import schema
    from repalign.store.features import open_features, skipped_samples
    from repalign.store.score_summary import is_score_file

    if path.is_file() and is_score_file(path):
        _score_file_info(path)
        return

    logging.getLogger("repalign.store.features").setLevel(
        logging.ERROR
    )  # incomplete is shown below
    try:
        ds = open_features(path)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    console = Console(width=200)
    with ds:
        a = ds.attrs
        complete = int(a.get("complete", 0)) == 1
        console.print(f"[bold]{escape(str(path))}[/]  {ds.sizes[schema.SAMPLE_DIM]} samples"
                      f" of {a.get(schema.N_TOTAL, '?')}, {'complete' if complete else '[red]INCOMPLETE[/] (resume with --resume)'}")  # fmt: skip
        prov = Table(show_header=False, title="provenance")
        for key in ("model", "checkpoint", "checkpoint_sha256", "dataset", "pooling", "compute_dtype",
                    "shard", "created", "repalign_version"):  # fmt: skip
            prov.add_row(key, escape(str(a.get(key, ""))))
        versions = json.loads(a.get("versions_json", "{}"))
        prov.add_row("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
        console.print(prov)
        table = Table(title="layers")
        for col in ("name", "shape", "stream", "depth", "relative depth", "module path"):
            table.add_column(col)
        for name, var in ds.data_vars.items():
            table.add_row(escape(str(name)), " x ".join(str(s) for s in var.shape), str(var.attrs.get("stream", "")),
                          str(var.attrs.get("depth", "")), f"{float(var.attrs.get('relative_depth', 0.0)):.3f}",
                          escape(str(var.attrs.get("module_path", "")) or "concat(" + str(var.attrs.get("sources", "")) + ")"))  # fmt: skip
        console.print(table)
        skipped = skipped_samples(ds)
        if skipped:
            console.print(escape(f"skipped {len(skipped)} sample(s): "
                          + "; ".join(f"{s} ({r})" for s, r in skipped[:5]) + (" ..." if len(skipped) > 5 else "")),
                          highlight=False)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("layers")(layers)
    app.command("extract")(extract)
    app.command("info")(info)
