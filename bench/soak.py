"""Soak run: train the tiny model for many steps on images of varying sizes through one decoder, recording the
process's resident memory (RSS) after every step, and print the series' summary as JSON.

    python bench/soak.py --decoder dali --steps 3000 [--json out.json]

Everything runs in this one process (Pillow with num_workers=0; DALI's CPU decoder threads live in it too), so
the RSS is the whole pipeline's. The slope over the last half of the steps says whether memory levels off.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import psutil
import torch
from PIL import Image


def make_varied_set(root: str, n: int = 48, seed: int = 0) -> str:
    """n images with independent random heights and widths in [32, 256] (half PNG, half JPEG) and a labels CSV."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows = ["name,mos"]
    for i in range(n):
        h, w = (int(v) for v in rng.integers(32, 257, 2))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"images/{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(os.path.join(root, name), quality=85)
        rows.append(f"{name},{float(rng.uniform(0, 100)):.3f}")
    csv_path = os.path.join(root, "labels.csv")
    with open(csv_path, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    return csv_path


def slope_mib_per_1000_steps(rss: list) -> float:
    """Least-squares slope of the RSS over the last half of the steps, MiB per 1000 steps."""
    tail = np.asarray(rss[len(rss) // 2:], dtype=np.float64) / 2**20
    if tail.size < 2:
        return 0.0
    return float(np.polyfit(np.arange(tail.size), tail, 1)[0] * 1000)


def soak(decoder: str, steps: int, workdir: str) -> dict:
    from lmcl_fast.data import IQADataset
    from lmcl_fast.train import TrainConfig, Trainer
    from lmcl_fast.train.trainer import crop_seed

    torch.set_num_threads(1)
    csv_path = make_varied_set(os.path.join(workdir, "data"))
    ds = IQADataset(os.path.join(workdir, "data"), csv_path)
    batch_size = 8
    epochs = math.ceil(steps / (len(ds) // batch_size)) + 1
    cfg = TrainConfig(root=ds.root, csv=csv_path, out_dir=os.path.join(workdir, "run"), arch="tiny", crop_size=32,
                      n_crops=3, min_crop=16, batch_size=batch_size, epochs=epochs, splits=1, decoder=decoder,
                      num_workers=0 if decoder == "pillow" else 2, device="cpu", seed=0, log_every=50)
    trainer = Trainer(cfg, ds, list(range(len(ds))), [0, 1, 2], os.path.join(workdir, "run", "split_00"),
                      progress=False)
    process = psutil.Process()
    rss, step, epoch, start = [], 0, 0, time.perf_counter()
    while step < steps:
        trainer.loader.set_epoch(epoch)
        for batch in trainer.loader:
            trainer.train_step(batch, [crop_seed(cfg.seed, epoch, i) for i in batch["index"].tolist()])
            step += 1
            if step % cfg.log_every == 0:
                trainer._read_logs()  # as fit() does: the on-device sums are read every log_every steps
            rss.append(process.memory_info().rss)
            if step == steps:
                break
        epoch += 1
    half = len(rss) // 2
    return {
        "decoder": decoder, "steps": steps, "seconds": round(time.perf_counter() - start, 1),
        "rss_first_mib": round(rss[0] / 2**20, 1), "rss_half_mib": round(rss[half] / 2**20, 1),
        "rss_last_mib": round(rss[-1] / 2**20, 1), "rss_max_mib": round(max(rss) / 2**20, 1),
        "growth_last_half_mib": round((rss[-1] - rss[half]) / 2**20, 1),
        "slope_last_half_mib_per_1000_steps": round(slope_mib_per_1000_steps(rss), 2),
        "rss_every_10_steps_mib": [round(v / 2**20, 1) for v in rss[::10]],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", choices=("pillow", "dali"), required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        result = soak(args.decoder, args.steps, workdir)
    text = json.dumps(result)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
