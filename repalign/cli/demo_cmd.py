"""``repalign demo``: train, extract, compare and plot on the embedded synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def demo(
    quick: bool = typer.Option(
        False, "--quick", help="The smallest setting (CI): fewer samples, steps and permutations."
    ),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Folder for every output."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Pretrain a tiny ViLBERT, compare its text and vision streams layer by layer, write results/."""
    from repalign.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick_config(out) if quick else DemoConfig(out=out)
    cfg.device = device
    result = run_demo(cfg)
    console = Console()
    console.print(f"demo finished in {result.seconds / 60:.1f} min; results in {result.out}/")
    console.print(f"  summary: {result.summary}")
    for fig in result.figures:
        console.print(f"  figure:  {fig}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
