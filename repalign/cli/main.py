"""The ``repalign`` command: assembles the verb modules listed below.

Each verb module exposes ``register(app: typer.Typer) -> None`` and adds its
commands (or a sub-app) there; this file only wires them together, so adding
a verb never touches another verb's code.
"""

from __future__ import annotations

import importlib
import logging

import typer

VERB_MODULES: tuple[str, ...] = (
    "repalign.cli.metrics_cmd",
    "repalign.cli.extract_cmd",
    "repalign.cli.merge_cmd",
    "repalign.cli.compare_cmd",
    "repalign.cli.train_cmd",
    "repalign.cli.demo_cmd",
)

app = typer.Typer(
    name="repalign",
    help="Measure how neural representations align: across layers, models and modalities.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _module in VERB_MODULES:
    importlib.import_module(_module).register(app)
