"""`lmcl demo`: make a synthetic IQA set from pristine photos, train a small model and evaluate it on
its test split, on the CPU in minutes. Prints SRCC/PLCC."""
from __future__ import annotations

import os
import sys

from .core.config import TrainConfig
from .core.presets import preset

# The demo trains the `cpu-small` preset (core/presets.py: the tiny CNN on native-resolution 64 x 64 crops of
# photos resized to a 256-pixel short side, evaluated on a 4 x 4 tiling) on one 80/20 content split. Sized to
# finish in under 10 minutes on a 2-core CPU.
DEMO_CONFIG = dict(preset("cpu-small"), splits=1)
DEMO_SYNTHETIC = dict(levels=5, seed=0, size=256)


def find_photos(photos: str | None) -> str:
    """--photos, else ../shared/data/photos from the current folder, else the same path relative to the
    repository root that holds this package."""
    if photos:
        if not os.path.isdir(photos):
            raise SystemExit(f"lmcl demo: --photos {photos} is not a folder")
        return photos
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [os.path.join("..", "shared", "data", "photos"),
                  os.path.join(repo_root, "..", "shared", "data", "photos")]
    for c in candidates:
        if os.path.isdir(c):
            return os.path.abspath(c)
    looked = ", ".join(os.path.abspath(c) for c in candidates)
    raise SystemExit(f"lmcl demo: no pristine photos found (looked in {looked}); "
                     "pass --photos DIR with a folder of photos (PNG/JPEG/TIFF)")


def run_demo(photos: str | None = None, out: str = "demo_out", device: str = "cpu", progress: bool = True,
             max_images: int | None = None, epochs: int | None = None, threads: int = 1) -> dict:
    """`threads`: torch CPU threads of the training process. One by default: the tiny model's steps are
    too small to split (on a busy 2-core machine two OpenMP threads measured many times slower), and the
    other core is left to the two image-decoding workers."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_demo(photos, out, device, progress, max_images, epochs)
    finally:
        torch.set_num_threads(previous)


def _run_demo(photos, out, device, progress, max_images, epochs) -> dict:
    from .data import make_synthetic
    from .experiment import train_splits

    src = find_photos(photos)
    data_dir = os.path.join(out, "data")
    print(f"lmcl demo: synthetic set from {src} -> {data_dir}", file=sys.stderr, flush=True)
    csv_path = make_synthetic(src, data_dir, max_images=max_images, **DEMO_SYNTHETIC)
    overrides = dict(DEMO_CONFIG, root=data_dir, csv=csv_path, out_dir=os.path.join(out, "run"), device=device)
    if epochs is not None:
        overrides["epochs"] = epochs
    cfg = TrainConfig(**overrides)
    summary = train_splits(cfg, progress=progress)
    print(summary["table"])
    med = summary["summary"]
    print(f"demo test split: SRCC {med['srcc']['median']:.4f}  PLCC {med['plcc']['median']:.4f}  "
          f"(results in {cfg.out_dir})")
    return summary
