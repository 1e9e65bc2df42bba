"""The one progress bar every long step uses, and the one way to print beside it.

In a terminal it is tqdm's bar. When stderr is not a terminal (CI, nohup, a scheduler, `2> log`) tqdm would write
carriage returns that a log shows as one endless line, or nothing at all when the bar is disabled; here it writes
one plain line every `DEFECTGEN_PROGRESS_SECONDS` seconds (default 30) instead, starting once a step has run
that long, so a redirected run still says where it is and how long it has left.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

PLAIN_INTERVAL_S = 30.0


class _Lines:
    """A file for tqdm that turns each redraw (`\\r...`) into one line of its own, and leaves out a redraw that
    reports the same count as the line before (tqdm draws the final count again when the bar closes)."""

    def __init__(self, stream):
        self.stream = stream
        self.last: str | None = None

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        if not text:
            return
        count = re.search(r"\d+/\d+", text)
        key = text[:count.end()] if count else text
        if key != self.last:
            self.stream.write(text + "\n")
        self.last = key

    def flush(self) -> None:
        self.stream.flush()


def is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def plain_interval() -> float:
    try:
        return max(float(os.environ.get("DEFECTGEN_PROGRESS_SECONDS", PLAIN_INTERVAL_S)), 0.0)
    except ValueError:
        return PLAIN_INTERVAL_S


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        disable: bool = False, leave: bool = False, **options: Any):
    """A tqdm bar on stderr: drawn in a terminal, plain timed lines otherwise (see the module docstring)."""
    from tqdm import tqdm

    if is_terminal():
        options.setdefault("mininterval", 0.5)
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, dynamic_ncols=True,
                    file=sys.stderr, **options)
    interval = plain_interval()
    options.pop("dynamic_ncols", None)
    # delay: a step shorter than one interval prints nothing (a quick run's log, or a one-line error, stays clean);
    # leave=True: a step that did print ends with its final state, so the log shows that it finished
    options.update(mininterval=interval, maxinterval=max(interval, 1.0), delay=interval, ncols=100, ascii=True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=True, file=_Lines(sys.stderr),
                **options)


def above_bars(log: Callable[[str], Any]) -> Callable[[str], None]:
    """`log` wrapped so its lines print above any open bar instead of into the middle of it."""
    from tqdm import tqdm

    def write(message: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            log(message)

    return write
