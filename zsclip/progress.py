"""Progress bars for long work, drawn on stderr with rich, and only when stderr is a terminal."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Protocol


class Advance(Protocol):
    """``advance(n)`` counts ``n`` more items done; ``status`` (when given) is shown after the description."""

    def __call__(self, n: int, status: str | None = None) -> None: ...


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Advance]:
    """Yield ``advance(n, status=None)``; a bar is shown on an interactive stderr unless ``ZSCLIP_PROGRESS=0``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    enabled = console.is_terminal and os.environ.get("ZSCLIP_PROGRESS", "1") != "0" and total > 0
    if not enabled:
        yield lambda n, status=None: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int, status: str | None = None) -> None:
            if status is None:
                progress.advance(task, n)
            else:
                progress.update(task, advance=n, description=f"{description} ({status})")

        yield advance
