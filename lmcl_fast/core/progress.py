"""Progress reports: a tqdm bar on a terminal; in a log file or CI a plain line every few seconds (no carriage
returns), with the rate, so logs stay short and readable."""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

INTERVAL_ENV = "LMCL_PROGRESS_INTERVAL"  # seconds between plain lines (default 5)


class LineProgress:
    """The part of tqdm's interface the project uses (iteration, update, set_postfix, close), writing one line
    `desc: n/total unit (p%), r unit/s, postfix` at most every `interval` seconds and a last line on close."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0, interval=5.0, file=None):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self.interval = desc, unit, int(initial), float(interval)
        self.file = file or sys.stderr
        self.start = self.last = time.monotonic()
        self.start_n = self.n
        self.postfix = ""
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        state = f" done in {elapsed:.0f} s" if done else ""
        print(f"{self.desc}: {count} {self.unit}{share}, {rate:.1f} {self.unit}/s{state}{tail}", file=self.file,
              flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic(), done=True)


def progress_bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0,
                 enabled: bool = True, file=None):
    """tqdm when `file` (stderr) is a terminal, LineProgress otherwise; a silent tqdm when not `enabled`."""
    file = file or sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if file.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, file=file, leave=False,
                    dynamic_ncols=True)
    return LineProgress(iterable, total, desc, unit, initial, float(os.environ.get(INTERVAL_ENV, "5")), file)
