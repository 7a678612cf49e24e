"""Speed guard: each op against its eager baseline, interleaved in one process; fails below the floors.

CI runs it through bench/test_speed_guard.py (a plain test, so it runs under `pytest --benchmark-disable`).
Ratios (eager time / op time), not absolute times, so a slower machine does not fail it; the floors in
bench/speed_floors.json sit at or below half of the smallest ratio measured, so a busy shared machine does
not fail it either. Run by hand to see the table, or to measure new floors:

    python bench/speed_guard.py               # one measurement, the table, exit status 1 below a floor
    python bench/speed_guard.py --runs 5      # 5 measurements: min/median per op and suggested floors
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # run as a script from anywhere: the benchmark modules hold the baselines
    sys.path.insert(0, HERE)

from bench_crop_saliency import eager_table  # noqa: E402
from bench_lmc_loss import reference_lmc_loss  # noqa: E402
from bench_multi_crop import MEAN, STD, _crop_eager, _loop  # noqa: E402

from lmcl_fast import ops  # noqa: E402

FLOORS_PATH = os.path.join(HERE, "speed_floors.json")
# Seconds of interleaved timing per op (both contenders together); the whole guard stays well under 60 s.
BUDGET_S = 3.0
MIN_ROUNDS = 5
SAMPLE_S = 0.002  # each sample repeats the call until it lasts about this long (timer resolution, call overhead)


def _multi_crop_case():
    g = torch.Generator().manual_seed(0)
    B, H, W, N, S = 4, 256, 320, 8, 64
    images = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=g)
    boxes = ops.sample_boxes([H] * B, [W] * B, N, generator=g)
    flips = torch.rand((B, N), generator=g) < 0.5
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    rows, flip_rows = boxes.tolist(), flips.tolist()
    ours = lambda: ops.multi_crop(images, boxes, (S, S), mean=MEAN, std=STD, flip=flips)  # noqa: E731
    x = images.permute(0, 3, 1, 2)  # the NCHW view of the decoder-layout batch, as the reference loop takes it
    eager = lambda: _loop(_crop_eager, x, rows, flip_rows, (S, S), mean, std)  # noqa: E731
    return f"uint8 [{B},{H},{W},3] x {N} boxes -> {S}x{S}", ours, eager


def _crop_saliency_case():
    g = torch.Generator().manual_seed(0)
    B, H, W, N = 8, 256, 320, 64
    saliency = torch.rand(B, H, W, generator=g)
    side = torch.randint(16, 257, (B, N, 1), generator=g)
    top = (torch.rand(B, N, 1, generator=g) * (H - side + 1)).floor().long()
    left = (torch.rand(B, N, 1, generator=g) * (W - side + 1)).floor().long()
    boxes = torch.cat([top, left, side, side], dim=-1)
    return (f"[{B},{H},{W}] x {N} boxes", lambda: ops.crop_saliency(saliency, boxes),
            lambda: eager_table(saliency, boxes))


def _lmc_loss_case():
    g = torch.Generator().manual_seed(0)
    B, N, D = 64, 8, 128
    z = torch.randn(B, N, D, generator=g).requires_grad_(True)
    t = torch.randn(B, N, D, generator=g).requires_grad_(True)
    a = torch.randint(0, N, (B,), generator=g)

    def step(loss_fn):
        def run():
            z.grad = t.grad = None
            loss_fn(z, a, t).backward()
        return run

    return f"fwd+bwd M={B * N} D={D}", step(ops.lmc_loss), step(reference_lmc_loss)


# op -> (case builder, baseline name)
CASES = {
    "multi_crop": (_multi_crop_case, "eager F.interpolate per crop"),
    "crop_saliency": (_crop_saliency_case, "eager float64 cumsum table"),
    "lmc_loss": (_lmc_loss_case, "eager [M, M] reference"),
}


def _sample(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def measure(ours, eager, budget_s: float = BUDGET_S) -> dict:
    """Interleaved timing (ours, eager, ours, eager...) for about `budget_s` seconds. The ratio is
    min(eager) / min(ours): the minimum is the sample least disturbed by other processes."""
    ours(), eager()  # warm-up (allocations, lazy initialisation)
    reps = {}
    for name, fn in (("ours", ours), ("eager", eager)):
        t = _sample(fn, 1)
        reps[name] = max(1, int(SAMPLE_S / max(t, 1e-6)))
    times = {"ours": [], "eager": []}
    start = time.perf_counter()
    while len(times["ours"]) < MIN_ROUNDS or time.perf_counter() - start < budget_s:
        times["ours"].append(_sample(ours, reps["ours"]))
        times["eager"].append(_sample(eager, reps["eager"]))
    per_round = [e / o for o, e in zip(times["ours"], times["eager"])]
    return dict(ratio=min(times["eager"]) / min(times["ours"]), round_median=statistics.median(per_round),
                ours_ms=min(times["ours"]) * 1e3, eager_ms=min(times["eager"]) * 1e3, rounds=len(per_round))


def load_floors(path: str = FLOORS_PATH) -> dict:
    with open(path) as fh:
        return json.load(fh)["floors"]


def run_guard(floors: dict | None = None, threads: int = 1, budget_s: float = BUDGET_S) -> tuple:
    """Measure every op; an op below its floor is measured once more (a noise burst must hit both runs to
    fail). Returns (rows, failures) where failures lists the ops whose ratio stayed below the floor."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # one thread: both contenders alike, least sensitive to a busy machine
    try:
        rows, failures = [], []
        for op, (build, baseline) in CASES.items():
            shape, ours, eager = build()
            res = measure(ours, eager, budget_s)
            floor = (floors or {}).get(op)
            if floor is not None and res["ratio"] < floor:
                retry = measure(ours, eager, 2 * budget_s)
                if retry["ratio"] > res["ratio"]:
                    res = retry
                if res["ratio"] < floor:
                    failures.append(op)
            rows.append(dict(op=op, shape=shape, baseline=baseline, floor=floor, **res))
        return rows, failures
    finally:
        torch.set_num_threads(previous)


def format_table(rows: list) -> str:
    lines = [f"{'op':<14} {'case':<36} {'ours ms':>9} {'eager ms':>9} {'ratio':>7} {'floor':>6}  baseline",
             "-" * 110]
    for r in rows:
        floor = "-" if r["floor"] is None else f"{r['floor']:.2f}"
        flag = "  BELOW FLOOR" if r["floor"] is not None and r["ratio"] < r["floor"] else ""
        lines.append(f"{r['op']:<14} {r['shape']:<36} {r['ours_ms']:9.3f} {r['eager_ms']:9.3f} "
                     f"{r['ratio']:7.2f} {floor:>6}  {r['baseline']}{flag}")
    lines.append(f"ratio = min eager time / min op time over interleaved rounds; torch threads 1; "
                 f"load average {_load_average()}")
    return "\n".join(lines)


def _load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1, help="measure this many times; print min/median and floors "
                                                       "at half the minimum")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds of timing per op and run")
    args = p.parse_args(argv)
    floors = load_floors()
    ratios: dict = {op: [] for op in CASES}
    failed = False
    for i in range(args.runs):
        rows, failures = run_guard(floors, budget_s=args.budget)
        print(f"run {i + 1}/{args.runs}\n{format_table(rows)}\n", flush=True)
        failed |= bool(failures)
        for r in rows:
            ratios[r["op"]].append(r["ratio"])
    if args.runs > 1:
        print(f"{'op':<14} {'min':>7} {'median':>7} {'suggested floor (min / 2)':>26}")
        for op, vals in ratios.items():
            print(f"{op:<14} {min(vals):7.2f} {statistics.median(vals):7.2f} {min(vals) / 2:26.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
