"""Checkpoints: written atomically (temporary file, then os.replace), holding everything a resume needs."""
from __future__ import annotations

import os
import pickle
import random
import re

import numpy as np
import torch

from .config import TrainConfig, check_compatible

FORMAT = 3  # 3: tensors and plain containers only (loads with weights_only=True); per-rank RNG states,
#             world_size, batch_in_epoch (mid-epoch checkpoints)
METRIC_FORMAT = "lmcl_fast.metric/1"  # `lmcl export`: config, predicting branches' weights, MOS normalisation


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects other than tensors and plain containers (loading it could run code)."""


def rng_state() -> dict:
    """torch, numpy and python RNG states as tensors and plain containers (a weights_only load reads them)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state({"bit_generator": s["bit_generator"],
                         "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]},
                         "has_gauss": s["has_gauss"], "gauss": s["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict, path: str) -> None:
    """torch.save to path.tmp, fsync, then os.replace: a crash mid-write never leaves a torn checkpoint. A failed
    write (full disk, read-only folder) removes the partial path.tmp and raises the OSError; path is untouched."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def load_safe(path: str, what: str = "checkpoint") -> object:
    """torch.load(weights_only=True) on the CPU: tensors and plain containers only. A file carrying any other
    pickled object (a callable, a class instance, a numpy array) is refused with UnsafeCheckpointError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        detail = f"it names {found.group(1)}" if found else str(exc).strip().splitlines()[-1][:200]
        raise UnsafeCheckpointError(
            f"{what}: refusing to load {path}: it holds pickled Python objects other than tensors and plain "
            f"containers ({detail}), and unpickling them could run arbitrary code. lmcl_fast files hold none; "
            f"if you trust the file's author, convert it with torch.load(weights_only=False) yourself"
        ) from None


def load(path: str, config: TrainConfig | None = None) -> dict:
    """Load a training checkpoint (on CPU, weights_only). With `config`, refuse one whose model/optimizer-shaping
    fields differ."""
    ckpt = load_safe(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise ValueError(f"checkpoint: {path} is not an lmcl_fast checkpoint (format {FORMAT}, found {found!r})")
    if config is not None:
        check_compatible(config, ckpt["config"], f"checkpoint {path}")
    return ckpt
