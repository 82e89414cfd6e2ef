"""``repalign demo``: train, extract, compare and plot on the embedded synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from repalign.cli._errors import fail


def demo(
    quick: bool = typer.Option(
        False, "--quick", help="The smallest setting (CI): fewer samples, steps and permutations."
    ),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Folder for every output."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (cuda if visible)."),
) -> None:
    """Pretrain a tiny ViLBERT, compare its text and vision streams layer by layer, write results/."""
    from repalign import demo as demo_mod
    from repalign._numerics import resolve_device

    # checked here, before minutes of training, not as a traceback from deep inside it
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file; the demo writes a folder of results: give a folder")
    try:
        resolved = resolve_device(device)
    except ValueError as exc:
        raise fail(f"--device: {exc}") from None
    cfg = demo_mod.DemoConfig.quick_config(out) if quick else demo_mod.DemoConfig(out=out)
    cfg.device = str(resolved)
    result = demo_mod.run_demo(cfg)
    console = Console()
    console.print(f"demo finished in {result.seconds / 60:.1f} min; results in {result.out}/")
    console.print(f"  summary: {result.summary}")
    for fig in result.figures:
        console.print(f"  figure:  {fig}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
