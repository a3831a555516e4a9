"""Progress a person can watch: a bar with steps/s and ETA on a terminal, plain lines elsewhere.

A bar (tqdm) is drawn for a long phase (training, the teacher cache's build, evaluation of a large split, the
trials of ``distill tune``) when stderr is a terminal and the run is not under CI (the ``CI`` variable set to
anything but empty, ``0`` or ``false``); elsewhere (a log file, a pipe, CI) the phases print plain lines, which
carry steps/s and ETA themselves. ``DISTILL_PROGRESS=bar`` or ``lines`` overrides the choice. ``--quiet`` (no
progress writer) shows neither.

Lines written while a bar is open go through :func:`write_line` (``tqdm.write``), which moves the bar below them
instead of breaking it. A bar costs one Python call per step and redraws at most ten times a second.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from tqdm import tqdm


def bars_enabled(stream: IO[str] | None = None) -> bool:
    """Whether a phase draws a bar (True) or prints plain lines (False): ``DISTILL_PROGRESS`` (``bar`` or
    ``lines``) if set, else a bar when ``stream`` (stderr) is a terminal and ``CI`` is not set."""
    forced = os.environ.get("DISTILL_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return False
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def write_line(line: str) -> None:
    """One progress line to stderr, above any open bar."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) of a duration; ``?`` if unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rate_and_eta(done: int, total: int | None, elapsed: float, unit: str = "steps") -> str:
    """``"12.3 steps/s, ETA 1:05"`` from ``done`` of ``total`` units in ``elapsed`` seconds."""
    if done <= 0 or elapsed <= 0:
        return f"? {unit}/s"
    rate = done / elapsed
    text = f"{rate:.3g} {unit}/s"
    return text if total is None else f"{text}, ETA {format_eta((total - done) / rate)}"


class Bar:
    """A progress bar over ``total`` units (None: unknown) with rate and ETA, or nothing when ``enabled`` is
    false (then every method does nothing). ``initial``: units already done (a resumed run)."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "step", initial: int = 0,
                 enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, dynamic_ncols=True,
                             leave=True, mininterval=0.1, smoothing=0.1)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Phase:
    """Progress of one long phase over ``total`` units (None: unknown): a :class:`Bar` when bars are enabled
    (:func:`bars_enabled`), else a plain line through ``say`` each time another tenth of the total is done
    (``desc: done/total units (rate, ETA)``); nothing at all without ``say`` (``--quiet``).
    ``with Phase(...) as p: ... p.update(n)``."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "step",
                 say: Callable[[str], None] | None = None, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.say = total, desc, unit, say
        self.bar = Bar(total, desc, unit=unit, initial=initial, enabled=say is not None and bars_enabled())
        self.done, self.start, self.t0 = initial, initial, time.perf_counter()
        self.next_line = self._next(initial)

    def _next(self, done: int) -> int | None:
        """The count at which the next plain line is due (the next tenth of the total)."""
        if self.total is None or self.total <= 0:
            return None
        tenth = max(1, -(-self.total // 10))
        return min(self.total, (done // tenth + 1) * tenth)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar.active:
            self.bar.update(n)
        elif self.say is not None and self.next_line is not None and self.done >= self.next_line:
            speed = rate_and_eta(self.done - self.start, None if self.total is None else self.total - self.start,
                                 time.perf_counter() - self.t0, unit=f"{self.unit}s")
            self.say(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({speed})")
            self.next_line = self._next(self.done)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
