"""`edgegen train` commands (being written; see DESIGN.md for the owner)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
