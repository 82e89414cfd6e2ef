"""Command-line interface: one typer sub-app per verb group, assembled in ``main``."""
