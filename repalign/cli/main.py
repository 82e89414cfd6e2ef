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


def main(argv: list[str] | None = None) -> None:
    """The ``repalign`` console command: the typer app, with usage errors (a bad option
    value, a missing argument, an unknown verb) reported like every other user error,
    as one ``error:`` line on stderr with exit status 2, and SIGTERM handled as Ctrl-C."""
    import sys

    from repalign._signals import sigterm_as_keyboard_interrupt
    from repalign.cli._errors import fail

    try:
        # SIGTERM (kill, scancel) runs each verb's Ctrl-C handling: temporary files
        # removed, written batches kept, training saved (it installs its own handler)
        with sigterm_as_keyboard_interrupt():
            code = app(args=argv, prog_name="repalign", standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a command's own handling
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        # click's exceptions (typer may vendor its own click: matched by shape, not class)
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        kinds = {cls.__name__ for cls in type(err).__mro__}
        if "NoArgsIsHelpError" in kinds:  # a bare `repalign` or `repalign train`: the help
            err.show()
            sys.exit(err.exit_code)
        message = err.format_message()
        ctx = getattr(err, "ctx", None)
        if "UsageError" in kinds and ctx is not None:
            message += f" (see `{ctx.command_path} --help`)"
        fail(message)
        sys.exit(2 if "UsageError" in kinds else err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
