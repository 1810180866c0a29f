"""What the command-line modules share: the consoles, the error wrapper and the common options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from .errors import ZsclipError, command_line

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Registered dataset name (`zsclip datasets list`).")]
RootOpt = Annotated[Path | None, typer.Option("--dataset-root", help="Folder holding the dataset.")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="open_clip architecture, local-dir:FOLDER, hf-hub:ORG/NAME or toyworld "
    "(default: the dataset card's model, else ViT-B-32).")]
PretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help="Weights tag or checkpoint file for an open_clip architecture (default: openai).")]


def run_or_exit(fn: Callable[[], T]) -> T:
    """Call ``fn`` and turn a ``ZsclipError`` into a one-line message and exit code 2 (no trace)."""
    try:
        with command_line():
            return fn()
    except ZsclipError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
