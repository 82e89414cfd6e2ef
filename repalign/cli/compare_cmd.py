"""``repalign compare`` and ``repalign plot``: feature files -> scores.nc -> figures.

This module only parses options and calls the library: :func:`repalign.compare.compare`
(or :func:`repalign.compare.streaming.streaming_compare`),
:func:`repalign.store.outputs.check_output_file` (the --out check), :mod:`repalign.store.scores`
(write, open) and :func:`repalign.store.plot.plot_scores`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from repalign.cli._errors import fail, stderr

log = logging.getLogger(__name__)


def metric_requests(names: list[str], flags: dict[str, Any]) -> list[Any]:
    """One request per ``--metric``, each with the given flags it accepts.

    A flag (``--k``, ``--unbiased``) goes to every listed metric that takes it;
    a flag that none of them takes is an error, so it is never silently dropped.
    """
    from repalign.compare import MetricRequest
    from repalign.metrics import get_metric

    specs = [get_metric(n) for n in names]
    requests = []
    for name, spec in zip(names, specs, strict=True):
        options = {k: v for k, v in flags.items() if k in spec.options}
        requests.append(MetricRequest(name, options))
    for flag in flags:
        if not any(flag in spec.options for spec in specs):
            from repalign.metrics import list_metrics

            takers = [m for m in list_metrics() if flag in get_metric(m).options]
            raise TypeError(
                f"--{flag.replace('_', '-')} is an option none of the chosen metrics "
                f"({', '.join(names)}) takes; metrics that take it: {', '.join(takers) or 'none'}"
            )
    return requests


def compare_cmd(
    files: list[Path] = typer.Argument(
        ..., help="One feature file (its layers against each other) or two (A against B)."
    ),
    metric: list[str] = typer.Option(
        ["cka"], "--metric", "-m", help="Metric to run (repeatable); see `repalign metrics`."
    ),
    layers_a: list[str] = typer.Option(
        ["*"], "--layers-a", help="Layers of A: glob, exact name or re:REGEX (repeatable)."
    ),
    layers_b: list[str] | None = typer.Option(
        None,
        "--layers-b",
        help="Layers of B (repeatable). With one file: a second selection from it "
        "(e.g. text against vision); default all layers.",
    ),
    k: int | None = typer.Option(None, "--k", help="Neighbours for k-NN metrics."),
    unbiased: bool = typer.Option(
        False, "--unbiased", help="Unbiased HSIC estimator for the metrics that take it."
    ),
    permutations: int = typer.Option(
        0,
        "--permutations",
        min=0,
        help="Permutation null per layer pair (adds pvalue, null_mean, null_std).",
    ),
    bootstrap: int = typer.Option(
        0, "--bootstrap", min=0, help="Bootstrap resamples per layer pair (adds ci_low, ci_high)."
    ),
    stats_pairs: str = typer.Option(
        "all",
        "--stats-pairs",
        help="all | matched: statistics for every layer pair, or only for the depth-matched "
        "pairs a profile plots (much cheaper on large grids).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of permutations and resamples."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    align_on_ids: bool = typer.Option(
        False,
        "--align-on-ids",
        help="Match rows of the two files by sample id when they are reordered or differ "
        "(keeps the shared ids); without it such files are refused.",
    ),
    allow_incomplete: bool = typer.Option(
        False, "--allow-incomplete", help="Accept feature files whose extraction did not finish."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Score file to write (netCDF, .nc)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted compare: keep the metrics in OUT.partial*.nc, "
        "compute only the others.",
    ),
    streaming: bool = typer.Option(
        False,
        "--streaming",
        help="Linear CKA / CCA from files larger than memory, read --chunk-size samples at a time.",
    ),
    chunk_size: int = typer.Option(
        4096, "--chunk-size", min=2, help="Samples per read with --streaming."
    ),
) -> None:
    """Score layers of feature files against each other and write a score file."""
    from repalign.compare import ComparisonInterrupted, compare
    from repalign.store.outputs import SCORES, check_output_file
    from repalign.store.scores import write_scores

    if len(files) > 2:
        raise fail(f"compare takes one or two feature files, got {len(files)}")
    flags: dict[str, Any] = {}
    if k is not None:
        flags["k"] = k
    if unbiased:
        flags["unbiased"] = True
    try:  # the options, then the output: both before the (possibly long) computation
        requests = metric_requests(metric, flags)
        if streaming and (permutations or bootstrap):
            raise ValueError(
                "--streaming computes scores only; drop --permutations/--bootstrap or --streaming"
            )
        check_output_file(out, SCORES, overwrite=overwrite, inputs=files,
                          inputs_are="one of the feature files being compared")  # fmt: skip
        if resume and streaming:
            raise ValueError("--resume continues an interrupted compare; --streaming has none")
        finished, partials = None, []
        if resume:
            finished, partials = _finished_part(files, layers_a, layers_b, permutations,
                                                bootstrap, seed, align_on_ids, stats_pairs, out)  # fmt: skip
            done = {str(m) for m in finished["metric"].values}
            requests = [r for r in requests if r.label not in done]
    except (ValueError, TypeError, OSError) as exc:
        raise fail(str(exc)) from None
    try:
        if not requests:  # --resume: every metric had finished
            scores = finished
        elif streaming:
            scores = _streaming(files, requests, layers_a, layers_b, chunk_size=chunk_size,
                                device=device, align_on_ids=align_on_ids,
                                allow_incomplete=allow_incomplete)  # fmt: skip
        else:
            scores = compare(
                files,
                requests,
                layers_a=layers_a,
                layers_b=layers_b or None,
                permutations=permutations,
                bootstrap=bootstrap,
                stats_pairs=stats_pairs,
                seed=seed,
                device=device,
                align_on_ids=align_on_ids,
                allow_incomplete=allow_incomplete,
            )
    except ComparisonInterrupted as stop:
        raise _save_finished(stop, out) from None
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    try:  # checked again: the file may have appeared while computing
        if finished is not None and requests:
            from repalign.store.scores import merge_scores

            scores = merge_scores([finished, scores])
        write_scores(scores, out, overwrite=overwrite)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    for path in partials:  # merged into --out: no longer needed
        path.unlink()
    Console().print(
        f"wrote {out}: {scores.sizes['metric']} metric(s) x {scores.sizes['layer_a']} x "
        f"{scores.sizes['layer_b']} layers over {scores.attrs['n_samples']} samples",
        highlight=False,
    )


def _finished_part(
    files: list[Path],
    layers_a: list[str],
    layers_b: list[str] | None,
    permutations: int,
    bootstrap: int,
    seed: int,
    align_on_ids: bool,
    stats_pairs: str,
    out: Path,
) -> tuple[Any, list[Path]]:
    """``--resume``: the metrics an interrupted run toward ``out`` finished, checked against
    this run's feature files (by content) and settings."""
    from repalign.compare.resume import finished_metrics
    from repalign.provenance import sha256_file
    from repalign.store.paths import expand_paths

    settings = {"layers_a": list(layers_a), "layers_b": list(layers_b) if layers_b else None,
                "permutations": permutations, "bootstrap": bootstrap, "level": 0.95,
                "seed": seed, "align_on_ids": align_on_ids, "stats_pairs": stats_pairs}  # fmt: skip
    hashes = [sha256_file(p) for f in files for p in expand_paths(f)]
    return finished_metrics(out, settings, hashes)


def _save_finished(stop: Any, out: Path) -> typer.Exit:
    """Ctrl-C/SIGTERM during compare: write the metrics that finished to a new
    ``OUT.partial.nc`` (never over a file), say what is left and how to finish."""
    from rich.markup import escape

    from repalign.store.scores import write_scores

    left = ", ".join(stop.remaining)
    if stop.finished is None:
        stderr.print(escape(f"stopped before any metric finished; nothing written (not done: "
                            f"{left})"), highlight=False)  # fmt: skip
        return typer.Exit(130)
    from repalign.compare.resume import partial_path

    path = partial_path(out)
    write_scores(stop.finished, path)
    done = ", ".join(str(m) for m in stop.finished["metric"].values)
    stderr.print(
        escape(
            f"stopped: the finished metric(s) {done} are in {path}; not done: {left}. Run the "
            "same command with --resume to compute only those and write --out"
        ),
        highlight=False,
        soft_wrap=True,
    )
    return typer.Exit(130)


def _streaming(
    files: list[Path],
    requests: list[Any],
    layers_a: list[str],
    layers_b: list[str] | None,
    **options: Any,
) -> Any:
    """``compare --streaming``: :func:`repalign.compare.streaming.streaming_compare`."""
    from repalign.compare.streaming import streaming_compare

    return streaming_compare(
        files, requests, layers_a=layers_a, layers_b=layers_b or None, **options
    )


def plot_cmd(
    scores: list[Path] = typer.Argument(..., help="Score file(s) from `repalign compare`."),
    kind: str = typer.Option("heatmap", "--kind", help="heatmap or profile."),
    metric: list[str] | None = typer.Option(
        None, "--metric", "-m", help="Metric label(s) to draw (repeatable); default all."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Figure file (.png, .svg, .pdf); default SCORES-KIND.png."
    ),
) -> None:
    """Draw a layer-by-layer heatmap or a depth profile from a score file."""
    from repalign.store.plot import plot_scores
    from repalign.store.scores import open_scores

    if out is None:  # SCORES-KIND.png; a quoted glob (run*.nc) loses its wildcards
        stem = re.sub(r"[*?\[\]]", "", scores[0].stem).strip("-_.") or "scores"
        out = scores[0].with_name(f"{stem}-{kind}.png")
    try:
        ds = open_scores(scores)
        plot_scores(ds, out, kind=kind, metrics=metric or None)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    Console().print(f"wrote {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
    app.command("plot")(plot_cmd)
