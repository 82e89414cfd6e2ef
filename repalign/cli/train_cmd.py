"""``repalign train pretrain|finetune``, ``repalign plot-training`` and ``repalign data cache``.

Config precedence: dataclass defaults < ``--config FILE.yaml`` < shortcut flags
(``--preset``, ``--tasks`` ...) < ``key=value`` overrides after the flags.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from repalign.cli._errors import fail, stderr

if TYPE_CHECKING:
    from repalign.train.interrupt import RunInterrupted

log = logging.getLogger(__name__)

train_app = typer.Typer(help="Pretrain or fine-tune the in-package ViLBERT.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare data for training.", no_args_is_help=True)

OVERRIDES = typer.Argument(
    None, help="Config overrides key=value, e.g. optim.lr=1e-3 loop.eval_every=100"
)


def _flag_overrides(**flags: object) -> list[str]:
    """Shortcut flags -> ``key=value`` overrides (flags left at None are not set)."""
    out = []
    for key, value in flags.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = "[" + ",".join(str(v) for v in value) + "]"
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out.append(f"{key}={value}")
    return out


def _names(text: str | None) -> list[str] | None:
    """``"mlm, ap,"`` -> ``["mlm", "ap"]`` (a stray comma or space is not a name)."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _interrupted(err: RunInterrupted) -> typer.Exit:
    """A run stopped by Ctrl-C or SIGTERM after saving: say how to go on, exit 130/143."""
    stderr.print(f"[bold yellow]stopped:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    return typer.Exit(err.exit_code)


def _data_overrides(data: str | None) -> list[str]:
    """``synthetic[:N[:SEED]]`` (N training pairs), a cache folder, or a data file."""
    if data is None:
        return []
    from repalign.data.loading import parse_synthetic

    synthetic = parse_synthetic(data)
    if synthetic is not None:
        overrides = ["data.name=synthetic"]
        if synthetic.n is not None:
            overrides.append(f"data.n_train={synthetic.n}")
        if synthetic.seed is not None:
            overrides.append(f"data.seed={synthetic.seed}")
        return overrides
    if Path(data).is_dir():
        if not (Path(data) / "cache.json").is_file():
            raise ValueError(
                f"--data {data} is a folder but not an image cache (no cache.json); build one "
                "with `repalign data cache`, or pass a captions .tsv"
            )
        return [f"data.cache={data}"]
    return [f"data.name={data}"]


def _check_run(out: str, device: str, *, resume: bool, overwrite: bool) -> None:
    """Checks before any file is written or model built: the device, and an existing run.

    A run folder that already holds a checkpoint is never trained over silently: the
    loop would replace its checkpoint and log (days of training) with the new run's.
    """
    from repalign._numerics import resolve_device

    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: pick one")
    resolve_device(device)
    run = Path(out)
    if not (resume or overwrite) and (run / "last").exists():
        raise FileExistsError(
            f"{run} already holds a training run ({run / 'last'}); pass --resume to continue "
            "it, --overwrite to train a new run over it, or choose another --out"
        )


def pretrain(
    overrides: list[str] = OVERRIDES,
    config: Path | None = typer.Option(None, "--config", "-c", help="A run config YAML."),
    preset: str | None = typer.Option(None, help="Model preset: tiny or base."),
    data: str | None = typer.Option(
        None,
        help="synthetic[:N[:SEED]] (N training pairs), a captions .tsv, or an image cache folder.",
    ),
    tasks: str | None = typer.Option(None, help="Comma-separated subset of mlm,mim,ap,itc."),
    out: str | None = typer.Option(None, "--out", "-o", help="Run directory."),
    steps: int | None = typer.Option(None, min=0, help="Optimizer steps."),
    batch_size: int | None = typer.Option(None, help="Pairs per step."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile."),
    probe_metrics: str | None = typer.Option(
        None, help="Alignment probes between the streams, e.g. cka,mutual_knn."
    ),
    probe_every: int | None = typer.Option(None, help="Probe every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN/last identically."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Train a new run in an --out that already holds one."
    ),
) -> None:
    """Pretrain ViLBERT (MLM, contrastive MIM, AP, ITC); writes RUN/eval.json."""
    from repalign.train.config import PretrainConfig
    from repalign.train.pretrain import run_pretraining

    flags = _flag_overrides(
        preset=preset,
        tasks=_names(tasks),
        out=out,
        **{
            "loop.steps": steps,
            "batch_size": batch_size,
            "loop.device": device,
            "loop.compile": compile,
            "probe.metrics": _names(probe_metrics),
            "probe.every": probe_every,
        },
    )
    _train(
        PretrainConfig,
        config,
        lambda: [*flags, *_data_overrides(data), *(overrides or [])],
        run_pretraining,
        resume=resume,
        overwrite=overwrite,
    )


def finetune(
    overrides: list[str] = OVERRIDES,
    config: Path | None = typer.Option(None, "--config", "-c", help="A run config YAML."),
    init: str | None = typer.Option(None, help="Pretraining run dir or checkpoint dir."),
    from_scratch: bool | None = typer.Option(
        None, "--from-scratch/--pretrained", help="Ignore --init's weights (the baseline)."
    ),
    data: str | None = typer.Option(
        None, help="synthetic-binary, or a train .jsonl (set data.eval_path=dev.jsonl)."
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="Run directory."),
    steps: int | None = typer.Option(None, min=0, help="Optimizer steps (at most)."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda ..."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN/last identically."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Train a new run in an --out that already holds one."
    ),
) -> None:
    """Fine-tune on a binary image-text task; early stopping on dev AUROC; writes RUN/eval.json."""
    from repalign.train.config import FinetuneConfig
    from repalign.train.finetune import run_finetuning

    flags = _flag_overrides(
        init=init,
        from_scratch=from_scratch,
        out=out,
        **{"data.name": data, "loop.steps": steps, "loop.device": device},
    )
    _train(
        FinetuneConfig,
        config,
        lambda: [*flags, *(overrides or [])],
        run_finetuning,
        resume=resume,
        overwrite=overwrite,
    )


def _train(
    config_class: type,
    config: Path | None,
    overrides: Callable[[], list[str]],
    run: Callable[..., dict[str, float]],
    *,
    resume: bool,
    overwrite: bool,
) -> None:
    """Resolve the run config (file, then ``overrides()``), check --out, train, print the
    final evaluation; errors and a Ctrl-C/SIGTERM stop become one-line messages."""
    from repalign.train.checkpoint import CheckpointError
    from repalign.train.config import load_config
    from repalign.train.interrupt import RunInterrupted

    try:
        cfg = load_config(config_class, config, overrides())
        _check_run(cfg.out, cfg.loop.device, resume=resume, overwrite=overwrite)
        result = run(cfg, resume=resume)
    except RunInterrupted as err:
        raise _interrupted(err) from None
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, CheckpointError) as err:
        raise fail(err) from None
    if result:  # ranks other than 0 under torchrun evaluate nothing and return {}
        typer.echo(json.dumps(result, indent=2, sort_keys=True))


def plot_training(
    run_dir: Path = typer.Argument(..., help="A training run directory (with log.jsonl)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="PNG path (default RUN/training.png)."
    ),
) -> None:
    """Draw loss and accuracy per task, and alignment probes, vs step."""
    from repalign.train.plot import plot_training as draw

    try:
        path = draw(run_dir, out)
    except (ValueError, FileNotFoundError) as err:
        raise fail(err) from None
    typer.echo(str(path))


def cache(
    data: str = typer.Argument(
        ..., help="synthetic[:N[:SEED]], a captions .tsv, a memes .jsonl ..."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to create."),
    size: int = typer.Option(64, help="Side of the cached square images in pixels."),
    images: Path | None = typer.Option(None, help="Image folder (default: next to the file)."),
) -> None:
    """Decode and resize every image once into one memory-mapped file."""
    from repalign.data.cache import build_cache
    from repalign.data.loading import load_dataset

    try:
        dataset = load_dataset(data, images=images, image_size=size)
        path = build_cache(dataset, out, size=size, source=data)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise fail(err) from None
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    train_app.command("pretrain")(pretrain)
    train_app.command("finetune")(finetune)
    app.add_typer(train_app, name="train")
    data_app.command("cache")(cache)
    app.add_typer(data_app, name="data")
    app.command("plot-training")(plot_training)
