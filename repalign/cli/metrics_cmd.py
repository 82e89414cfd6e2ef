"""``repalign metrics``: list the registered metrics and what is known about them."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


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


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
