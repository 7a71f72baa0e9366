"""Progress display for long loops (rich), written to stderr so stdout stays free for results.

Every helper takes ``enabled``; when it is False nothing is drawn, so library code can always call
these and let the caller (the CLI, a test) decide whether a bar appears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def console():
    """The rich console autoseg draws on (stderr)."""
    from rich.console import Console

    return Console(stderr=True)


def _make_progress():
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console(), transient=False)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n=1)``; draws a bar with count, elapsed and remaining time."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    bar = _make_progress()
    task = bar.add_task(description, total=total)
    with bar:
        yield lambda n=1: bar.advance(task, n)


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` while advancing a progress bar (``total`` defaults to ``len(items)``)."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total, enabled) as advance:
        for item in items:
            yield item
            advance(1)


@contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with ``message`` while the body runs (for steps without a known length)."""
    if not enabled:
        yield
        return
    with console().status(message):
        yield
