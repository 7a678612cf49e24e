"""Optional TensorBoard event files (torch.utils.tensorboard, needs the `tensorboard` extra): training losses,
learning rate, throughput and step times at every log read, test metrics after training. Rank 0 only."""
from __future__ import annotations

import sys


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Writes to `log_dir` when `enabled` and tensorboard imports; otherwise every call does nothing.
    `purge_step`: on a resume, events at or after this step (logged by the interrupted run after its last
    checkpoint) are dropped, as train_log.jsonl is rewritten from the checkpoint."""

    def __init__(self, log_dir: str, enabled: bool, purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        if not tensorboard_available():
            print("train: tensorboard is not installed (pip install 'lmcl_fast[tensorboard]'); no event files "
                  "are written (--no-tensorboard silences this)", file=sys.stderr)
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def log_train(self, entry: dict) -> None:
        """One train_log.jsonl entry: losses, lr, images/s, per-phase milliseconds."""
        if self.writer is None:
            return
        step = entry["step"]
        for key, value in entry.items():
            if key in ("step", "epoch"):
                continue
            if key == "time_ms":
                for phase, ms in value.items():
                    self.writer.add_scalar(f"time_ms/{phase}", ms, step)
            elif key == "images_per_s":
                self.writer.add_scalar("throughput/images_per_s", value, step)
            elif key == "lr":
                self.writer.add_scalar("lr", value, step)
            else:
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def log_test(self, metrics: dict, step: int) -> None:
        """A split's test metrics (srcc, plcc, ...) at the step training ended."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "n":
                self.writer.add_scalar(f"test/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
