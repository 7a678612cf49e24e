"""Throughput and the step-time breakdown of the training logs: wall clock on the CPU; on a GPU, CUDA events
recorded between the phases of each step and read only when the logs are read (no host sync in the step)."""
from __future__ import annotations

import time

import torch

# The phases of a step, in order. "data" is the host's wait for the loader (wall clock on every device).
PHASES = ("data", "h2d", "crops", "forward", "loss", "backward", "optimizer")
# Keys StepTimer.read() adds to a log entry: measured, so they differ between otherwise identical runs.
TIMING_KEYS = ("images_per_s", "time_ms")


class StepTimer:
    """Per-phase time and images/s since the last `read()`.

    In a step: `begin()` once its batch is there, `mark(phase)` at the end of each phase, `end(images)`.
    On CUDA each call records an event on the current stream (asynchronous); `read()` waits for the last one,
    which the log read (a device-to-host copy of the loss sums) has waited for already."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.images = 0
        self._events: list = []  # CUDA: per step, [(phase or None, event)], the first one at begin()
        self._since = time.perf_counter()

    def waited(self, seconds: float) -> None:
        self.seconds["data"] += seconds

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def begin(self) -> None:
        self._step = [(None, self._now())]

    def mark(self, phase: str) -> None:
        self._step.append((phase, self._now()))

    def end(self, images: int) -> None:
        """Close the step; `images` it trained on (over every rank)."""
        self.steps += 1
        self.images += images
        if self.cuda:
            self._events.append(self._step)
        else:
            for (_, start), (phase, stop) in zip(self._step, self._step[1:]):
                self.seconds[phase] += stop - start
        self._step = None

    def read(self) -> dict:
        """images/s (wall clock since the previous read) and mean milliseconds per step of every phase and
        of the whole step; then start a new interval. None when no step ran."""
        if self.steps == 0:
            return None
        if self._events:
            self._events[-1][-1][1].synchronize()
            for step in self._events:
                for (_, start), (phase, stop) in zip(step, step[1:]):
                    self.seconds[phase] += start.elapsed_time(stop) / 1e3
        elapsed = time.perf_counter() - self._since
        out = {"images_per_s": self.images / elapsed,
               "time_ms": {"step": 1e3 * elapsed / self.steps,
                           **{p: 1e3 * self.seconds[p] / self.steps for p in PHASES}}}
        self.reset()
        return out


def timed(iterable, timer: StepTimer):
    """Yield from `iterable`, adding the wait for each item to the timer's "data" phase."""
    it = iter(iterable)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        timer.waited(time.perf_counter() - start)
        yield item
