"""Progress bars for long work, drawn on stderr with rich, and only when stderr is a terminal."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Protocol


class Advance(Protocol):
    """``advance(n)`` counts ``n`` more items done; ``status`` (when given) is shown after the description."""

    def __call__(self, n: int, status: str | None = None) -> None: ...


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str | None = None) -> Iterator[Advance]:
    """Yield ``advance(n, status=None)``; a bar is shown on an interactive stderr unless ``ZSCLIP_PROGRESS=0``.

    With ``unit`` ("captions"), the bar also shows the rate, e.g. "250,000 captions/s".
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    enabled = console.is_terminal and os.environ.get("ZSCLIP_PROGRESS", "1") != "0" and total > 0
    if not enabled:
        yield lambda n, status=None: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if unit:
        columns.append(TextColumn(f"{{task.fields[rate]}} {unit}/s"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, rate="-")

        def advance(n: int, status: str | None = None) -> None:
            if status is None:
                progress.advance(task, n)
            else:
                progress.update(task, advance=n, description=f"{description} ({status})")
            speed = progress.tasks[task].speed
            if unit and speed:
                progress.update(task, rate=f"{speed:,.0f}")

        yield advance


@contextlib.contextmanager
def search_progress(description: str, total: int) -> Iterator[Callable[[dict], None]]:
    """Yield ``show(state)`` for a search job: a bar of steps with evaluations, best fitness, LLM calls and
    cost, on an interactive stderr unless ``ZSCLIP_PROGRESS=0``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not (console.is_terminal and os.environ.get("ZSCLIP_PROGRESS", "1") != "0"):
        yield lambda state: None
        return
    columns = (TextColumn("{task.description} step"), MofNCompleteColumn(), BarColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, info="")

        def show(state: dict) -> None:
            best = state["history"][-1][1] if state.get("history") else None
            info = (f"{state['evals']:,} evals, best {best:.3f}" if best is not None else f"{state['evals']:,} evals")
            info += f", LLM {state['llm_calls']} calls ({state['llm_cached']} cached), ${state['llm_cost']:.4f}"
            progress.update(task, completed=min(state["step"], total), info=info)

        yield show
