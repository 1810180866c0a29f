"""Progress bars for long work, drawn on stderr with rich, and only when stderr is a terminal."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; a bar is shown on an interactive stderr unless ``ZSCLIP_PROGRESS=0``.

    With ``unit`` ("captions"), the bar also shows the rate, e.g. "250,000 captions/s".
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    enabled = console.is_terminal and os.environ.get("ZSCLIP_PROGRESS", "1") != "0" and total > 0
    if not enabled:
        yield lambda n: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if unit:
        columns.append(TextColumn(f"{{task.fields[rate]}} {unit}/s"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, rate="-")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[task].speed
            if unit and speed:
                progress.update(task, rate=f"{speed:,.0f}")

        yield advance
