"""`lmcl bench --step`: the training step of the demo configuration broken into its phases (decode, boxes,
crops, saliency prior, forward, loss, backward, optimizer), for one or more ways of running it (compile
mode, memory format), interleaved step by step in one process so the machine's load hits all alike.

The images are made here (smooth random PNGs at the demo's sizes, 256-pixel short side), so no dataset is
needed. `decode` is the loader's time per batch in this process (Pillow, no workers); in a real run worker
processes decode while the step runs, so it is not part of the step's total."""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

PHASES = ("decode", "boxes", "crops", "saliency prior", "forward", "loss", "backward", "optimizer")
# Variant name -> TrainConfig overrides. "eager" is the trainer with compile off and contiguous tensors.
VARIANTS = {
    "eager": dict(compile="off", memory_format="contiguous"),
    "channels_last": dict(compile="off", memory_format="channels_last"),
    "compiled": dict(compile="default", memory_format="contiguous"),
    "compiled+channels_last": dict(compile="default", memory_format="channels_last"),
}


def _write_images(root: str, n: int, seed: int = 0) -> str:
    """n smooth random RGB PNGs (256 x 384, 384 x 256 and 256 x 256, as the demo's resized photos) and
    their labels.csv; returns the CSV path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = ((256, 384), (384, 256), (256, 256))
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows = ["name,mos"]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        low = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3))
        name = f"images/{i:03d}.png"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(os.path.join(root, name))
        rows.append(f"{name},{rng.uniform(0, 100):.3f}")
    path = os.path.join(root, "labels.csv")
    with open(path, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    return path


def profile_step(variants: list, steps: int = 20, warmup: int = 3, device: str = "cpu", threads: int = 1,
                 prepare=None) -> dict:
    """Run `warmup` + `steps` training steps of every variant (names from VARIANTS, or a dict of label ->
    TrainConfig overrides), interleaved step by step. `prepare(label, trainer)` may adjust a trainer before it
    runs. Returns {label: {phase: [seconds per step]}} with the step's total under "step" and the warm-up
    (compile) time under "warmup"."""
    from .core.phases import PhaseTimer
    from .data import IQADataset
    from .demo import DEMO_CONFIG
    from .train import TrainConfig, Trainer
    from .train.trainer import crop_seed

    if not isinstance(variants, dict):
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"bench: unknown step variants {unknown}; choose from {list(VARIANTS)}")
        variants = {v: VARIANTS[v] for v in variants}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg0 = DEMO_CONFIG | dict(root=tmp, csv=_write_images(tmp, DEMO_CONFIG["batch_size"] * 4),
                                      out_dir=tmp, num_workers=0, device=device, epochs=1000)
            dataset = IQADataset(cfg0["root"], cfg0["csv"])
            everything = list(range(len(dataset.names)))
            runs = {}
            for name, overrides in variants.items():
                trainer = Trainer(TrainConfig(**(cfg0 | overrides)), dataset, everything, everything[:1],
                                  os.path.join(tmp, name), progress=False)
                if prepare is not None:
                    prepare(name, trainer)
                trainer.phases = PhaseTimer(trainer.device)
                runs[name] = trainer
            batches = {name: _batches(t) for name, t in runs.items()}
            results = {name: {"warmup": [0.0]} for name in variants}
            for i in range(warmup + steps):
                for name, trainer in runs.items():
                    start = time.perf_counter()
                    batch = next(batches[name])
                    decode = time.perf_counter() - start
                    start = time.perf_counter()
                    trainer.train_step(batch, [crop_seed(0, 0, j) for j in batch["index"].tolist()])
                    if trainer.device.type == "cuda":
                        torch.cuda.synchronize(trainer.device)
                    total = time.perf_counter() - start
                    if i < warmup:
                        results[name]["warmup"][0] += total
                        trainer.phases.seconds.clear()
                        continue
                    trainer.phases.seconds["decode"].append(decode)
                    results[name].setdefault("step", []).append(total)
            for name, trainer in runs.items():
                results[name].update(trainer.phases.seconds)
            return results
    finally:
        torch.set_num_threads(previous)


def _batches(trainer):
    epoch = 0
    while True:
        trainer.loader.set_epoch(epoch)
        yield from trainer.loader
        epoch += 1


def format_profile(results: dict, title: str) -> str:
    names = list(results)
    head = f"{'phase (ms, min / median)':<26s}" + "".join(f"{n:>26s}" for n in names)
    lines = [title, head]
    for phase in (*PHASES, "step"):
        cells = []
        for n in names:
            v = results[n].get(phase)
            cells.append(f"{min(v) * 1e3:11.2f} / {statistics.median(v) * 1e3:8.2f}" if v else f"{'-':>22s}")
        lines.append(f"{phase:<26s}" + "".join(f"{c:>26s}" for c in cells))
    base = results[names[0]]["step"]
    for n in names[1:]:
        s = results[n]["step"]
        lines.append(f"{n} vs {names[0]}: {min(base) / min(s):.2f}x (min), "
                     f"{statistics.median(base) / statistics.median(s):.2f}x (median)")
    lines.append("warm-up incl. compile (s): " + ", ".join(f"{n} {results[n]['warmup'][0]:.1f}" for n in names))
    return "\n".join(lines)


def run_step_bench(variants: list, steps: int = 20, device: str = "cpu", threads: int = 1) -> str:
    import platform

    results = profile_step(variants, steps=steps, device=device, threads=threads)
    where = (torch.cuda.get_device_name(device) if device.startswith("cuda") else
             f"{platform.machine()} CPU, {os.cpu_count()} cores, {threads} torch thread(s)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return format_profile(results, f"lmcl bench --step: demo configuration (tiny CNN, peer, B=16, N=4, 64x64 "
                                   f"crops) on {where}, {steps} steps per variant interleaved, load {load:.1f}")
