"""`lmcl score` throughput (images/s) against scoring the same files one at a time (decode one file, call the
metric on it: what `lmcl predict` did before batching).

Models: the demo's tiny CNN (`lmcl demo`'s config: 4 x 4 grid of 64-pixel crops, two peer branches) and the
default ResNet-18 config (3 x 3 grid of 224-pixel crops, two branches), untrained (speed does not depend on the
weights). Files: the 24 Kodak24 photos of shared/data/photos (500 x 500) re-encoded as JPEG quality 90.

As a script (`python bench/bench_score.py [--rounds R] [--arch tiny resnet18] [--copies C]`; each photo is
written C times, default 4 = 96 files) the two ways run interleaved in
one process, R rounds each, and it prints min and median images/s, their ratio and the load average before and
after. Under pytest (CI: --benchmark-disable) each way runs once on a few files as a smoke test.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import pytest
import torch
from PIL import Image

from _harness import record
from lmcl_fast.core import checkpoint as ckpt_io
from lmcl_fast.core.config import TrainConfig
from lmcl_fast.core.metric import load_metric
from lmcl_fast.data import decode_image
from lmcl_fast.demo import DEMO_CONFIG
from lmcl_fast.models import build_model
from lmcl_fast.score import score_to_csv

PHOTOS = os.environ.get("LMCL_PHOTOS") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                       "photos")
MODELS = {"tiny": {k: DEMO_CONFIG[k] for k in ("arch", "crop_size", "eval_grid", "eval_scale")},
          "resnet18": {"arch": "resnet18"}}
BATCH, WORKERS = 16, 2


def write_model(path: str, arch: str) -> str:
    cfg = TrainConfig(device="cpu", **MODELS[arch])
    models = {k: build_model(cfg.arch, cfg.embed_dim, cfg.proj_hidden, cfg.head_hidden).state_dict() for k in "ab"}
    ckpt_io.save_atomic({"format": ckpt_io.METRIC_FORMAT, "config": cfg.to_dict(), "models": models,
                         "mos_stats": {"mean": 50.0, "std": 10.0}}, path)
    return path


def write_jpegs(folder: str, limit: int | None = None, copies: int = 1) -> list:
    """The Kodak photos as JPEG q90, each written `copies` times under its own name (more files per run, so a
    run's fixed costs, such as starting the decoding workers, weigh as little as in a large job)."""
    kodak = os.path.join(PHOTOS, "kodak24")
    names = sorted(os.listdir(kodak))[:limit]
    paths = []
    for c in range(copies):
        for n in names:
            paths.append(os.path.join(folder, f"{n.rsplit('.', 1)[0]}_{c}.jpg"))
            Image.open(os.path.join(kodak, n)).convert("RGB").save(paths[-1], quality=90)
    return paths


def one_at_a_time(metric, paths: list) -> int:
    with torch.no_grad():
        for p in paths:
            metric([decode_image(p)])
    return len(paths)


def batched(metric, paths: list, out_dir: str) -> int:
    out = os.path.join(out_dir, "scores.csv")
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    res = score_to_csv(paths, metric, out, batch_size=BATCH, num_workers=WORKERS, progress=False)
    return res["scored"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    if not os.path.isdir(os.path.join(PHOTOS, "kodak24")):
        pytest.skip(f"pristine photos not found at {PHOTOS}")
    return write_jpegs(str(tmp_path_factory.mktemp("jpeg")), limit=2)


@pytest.mark.parametrize("way", ["lmcl_score", "one_at_a_time"])
def test_score_throughput(benchmark, files, way, tmp_path):
    benchmark.group = "score-tiny-cpu"
    metric = load_metric(write_model(str(tmp_path / "model.lmcl"), "tiny"), "cpu")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = (lambda: batched(metric, files, str(out_dir))) if way == "lmcl_score" else (
        lambda: one_at_a_time(metric, files))
    assert benchmark(run) == len(files)
    record(benchmark, "cpu", way=way, images=len(files), batch=BATCH, workers=WORKERS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arch", nargs="+", default=["tiny", "resnet18"], choices=sorted(MODELS))
    ap.add_argument("--images", type=int, default=None, help="use the first N photos (default: all 24)")
    ap.add_argument("--copies", type=int, default=4, help="write each photo this many times (default 4: 96 files)")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench_score_")
    try:
        paths = write_jpegs(tmp, args.images, args.copies)
        out_dir = os.path.join(tmp, "out")
        os.makedirs(out_dir)
        print(f"load average before: {open('/proc/loadavg').read().split()[:3]}; torch threads "
              f"{torch.get_num_threads()}; {len(paths)} JPEGs; batch {BATCH}, {WORKERS} Pillow workers")
        for arch in args.arch:
            metric = load_metric(write_model(os.path.join(tmp, f"{arch}.lmcl"), arch), "cpu")
            one_at_a_time(metric, paths[:2])  # warm-up
            rates = {"lmcl score": [], "one at a time": []}
            for _ in range(args.rounds):  # interleaved: both ways see the same machine load
                for way, fn in (("lmcl score", lambda: batched(metric, paths, out_dir)),
                                ("one at a time", lambda: one_at_a_time(metric, paths))):
                    start = time.perf_counter()
                    n = fn()
                    rates[way].append(n / (time.perf_counter() - start))
            for way, r in rates.items():
                print(f"{arch:9s} {way:14s} images/s: max {max(r):7.2f}  median {statistics.median(r):7.2f}  "
                      f"(min time; {len(r)} rounds)")
            ratio = [a / b for a, b in zip(rates["lmcl score"], rates["one at a time"])]
            print(f"{arch:9s} speed-up of lmcl score: min {min(ratio):.2f}x  median {statistics.median(ratio):.2f}x")
        print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
