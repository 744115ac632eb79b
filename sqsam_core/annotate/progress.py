"""Progress of a long ``sqsam annotate`` run: a tqdm bar (rate, ETA) on a terminal, plain lines
every ``interval`` seconds otherwise (logs, CI, ``nohup``)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts finished images. ``total``: images in the run; ``initial``: already done (resume)."""

    def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None, interval: float = 10.0,
                 tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.total, self.done, self.failed = total, initial, 0
        self.initial = initial
        self.interval = interval
        self.started = self.last = time.monotonic()
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", file=self.stream, dynamic_ncols=True,
                            desc="annotate", smoothing=0.1)

    def update(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        if self.bar is not None:
            self.bar.update(1)
            if failed:
                self.bar.set_postfix(failed=self.failed, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = _clock(left / rate) if rate > 0 else "?"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        failed = f", {self.failed} failed" if self.failed else ""
        print(f"annotate: {self.done}/{self.total} images ({percent:.0f}%), {rate:.2f} images/s, "
              f"ETA {eta}{failed}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done > self.initial:
            self._line(time.monotonic())
