"""Wall-clock time of the phases of a training step (decode, crops, saliency prior, forward, loss, backward,
optimizer), for `lmcl bench --step`. Off by default: the trainer then enters a shared no-op context."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

_NOTHING = contextlib.nullcontext()


class NoPhases:
    def phase(self, name: str):
        return _NOTHING


class PhaseTimer(NoPhases):
    """Accumulates seconds per phase name. On CUDA it synchronises the device at every phase boundary, so a
    phase is charged for its own kernels: that is a measurement mode, never used in a real run."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict = defaultdict(list)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name].append(time.perf_counter() - start)
