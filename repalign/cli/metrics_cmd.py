"""``repalign metrics``: list the registered metrics and what is known about them."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from repalign.cli._errors import fail


def metrics() -> None:
    """List the registered metrics with bounds, direction, invariances and reference."""
    from repalign.metrics import get_metric, list_metrics

    table = Table(title="repalign metrics")
    for col in ("name", "kind", "bounds", "invariant to", "options", "reference"):
        table.add_column(col)
    for name in list_metrics():
        spec = get_metric(name)
        table.add_row(
            name,
            spec.kind,
            f"[{spec.bounds[0]:g}, {spec.bounds[1]:g}]",
            ", ".join(sorted(spec.invariances)) or "-",
            ", ".join(spec.options) or "-",
            spec.reference,
        )
    Console().print(table)


def metrics_demo(
    n: int = typer.Option(500, min=1, help="Number of generated stimuli."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Score generated representations with every metric and print the table.

    Three 'layers' share a latent cause to a decreasing degree, and a fourth is
    unrelated, so every similarity should fall from left to right.
    """
    import torch

    from repalign.metrics import get_metric, list_metrics

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g, dtype=torch.float64)
    base = z @ torch.randn(8, 64, generator=g, dtype=torch.float64)
    layers = {
        "rotated copy": base
        @ torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))[0],
        "noisy (SNR 1)": base + base.std() * torch.randn(n, 64, generator=g, dtype=torch.float64),
        "nonlinear": torch.tanh(z @ torch.randn(8, 48, generator=g, dtype=torch.float64)),
        "unrelated": torch.randn(n, 64, generator=g, dtype=torch.float64),
    }
    table = Table(title=f"similarity of a reference layer (n={n}, d=64) to four others")
    table.add_column("metric")
    for name in layers:
        table.add_column(name, justify="right")
    for metric in list_metrics():
        spec = get_metric(metric)
        fn = spec.fn
        label = metric if spec.higher_is_more_similar else f"{metric} (distance, lower = closer)"
        try:
            table.add_row(label, *(f"{float(fn(base, y)):.3f}" for y in layers.values()))
        except ValueError as exc:  # too few stimuli for this metric (k-NN, unbiased HSIC)
            raise fail(f"--n {n} is too small for {metric}: {exc}; use a larger --n") from None
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
    app.command("metrics-demo")(metrics_demo)
