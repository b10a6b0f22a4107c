"""How quarantine items are shown: one line each, labels by gravity, paths shortened to fit, bulk work
with a progress display. Pure formatting (and rich's progress), no state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mirror_scan.cli.console import current, err


def count_by(entries: list[dict], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[str(e[key])] = counts.get(str(e[key]), 0) + 1
    return counts


def item_reason(reason) -> str:
    from mirror_scan.scan.decide import short_reason

    return short_reason(reason) if reason else ""


LABEL_ORDER = ("csam", "hash list", "underage", "nsfw")  # the gravest first: it is the one a line shows


def label_text(labels: list[str]) -> str:
    """The gravest label and how many more (csam+2), "-" for none; "subject" (a context label) is left out."""
    shown = sorted((x for x in labels if x != "subject"), key=lambda x: (x not in LABEL_ORDER, LABEL_ORDER.index(x)
                   if x in LABEL_ORDER else 0, x))  # fmt: skip
    if not shown:
        return "-"
    return (shown[0] + (f"+{len(shown) - 1}" if len(shown) > 1 else ""))[:12]


STATE_SHORT = {"upstream_pending": "pending", "quarantining": "moving"}


def fit_left(text: str, room: int) -> str:
    """A path that fits `room` columns: its end kept (the file name), the start replaced by an ellipsis."""
    room = max(room, 8)
    return text if len(text) <= room else "\u2026" + text[-(room - 1) :]


@contextmanager
def counting(total: int, what: str, quiet: bool) -> Iterator[Callable[[], None] | None]:
    """A progress display for `total` steps at a terminal (more than a few): yields the step callback, or
    None where there is nothing to show (quiet, few steps, not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if quiet or total < 5 or not err.is_terminal:
        yield None
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=current().err, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def with_progress(entries: list[dict], what: str, quiet: bool):
    """Bulk work over `entries`, each counted on the display `counting` shows."""
    with counting(len(entries), what, quiet) as tick:
        for entry in entries:
            yield entry
            if tick:
                tick()
