"""Checkpoints: written atomically (temporary file, then os.replace), holding everything a resume needs."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from .config import TrainConfig, check_compatible

FORMAT = 2  # 2: per-rank RNG states, world_size, batch_in_epoch (mid-epoch checkpoints)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict, path: str) -> None:
    """torch.save to path.tmp, fsync, then os.replace: a crash mid-write never leaves a torn checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: str, config: TrainConfig | None = None) -> dict:
    """Load a checkpoint (on CPU). With `config`, refuse one whose model/optimizer-shaping fields differ."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    # Our own files: they hold numpy/python RNG states and plain containers, which weights_only rejects.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} is not an lmcl_fast checkpoint (format {FORMAT})")
    if config is not None:
        check_compatible(config, ckpt["config"], f"checkpoint {path}")
    return ckpt
