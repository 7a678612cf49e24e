"""Short benchmark of every op against eager PyTorch and torch.compile of it, on one device (bench/gpu_check.sh
runs it on a GPU). The contenders are the ones of the pytest benchmarks beside this file (bench_*.py), timed
here with CUDA events, interleaved round by round so that clock and load drift hit every contender alike.

    python bench/gpu_bench.py --out bench.json [--device cuda] [--quick] [--no-compile]

Prints a markdown table, case by case, and writes its rows (min and median ms, ratios, achieved GB/s or
TFLOP/s beside the device's measured copy bandwidth and float32 GEMM rate) as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_crop_saliency as crop_saliency_bench  # noqa: E402
import bench_lmc_loss as lmc_bench  # noqa: E402
import bench_multi_crop as multi_crop_bench  # noqa: E402
from _cost import crop_saliency_bytes, lmc_loss_flops, multi_crop_bytes, spectral_residual_bytes  # noqa: E402
from lmcl_fast import ops  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _elapsed_ms(fn, device: str) -> float:
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(contenders: dict, device: str, rounds: int) -> dict:
    """name -> list of per-call milliseconds; one call of each contender per round, after one warm-up each."""
    for fn in contenders.values():
        fn()
    _sync(device)
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(_elapsed_ms(fn, device))
    return times


def device_limits(device: str, quick: bool) -> dict:
    """Measured reference rates: device-to-device copy (bytes read + written per second; 256 MiB) and float32
    GEMM (full float32: TF32 off; 4096^3). Small sizes with quick."""
    n = (256 << 20) // 4 if not quick else (16 << 20) // 4
    m = 4096 if not quick else 512
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    copy = time_interleaved({"copy": lambda: dst.copy_(src)}, device, 10)["copy"]
    a = torch.randn(m, m, device=device)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gemm = time_interleaved({"mm": lambda: a @ a}, device, 5)["mm"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return {"copy_GB/s": 2 * n * 4 / min(copy) / 1e6, "fp32_gemm_TFLOP/s": 2 * m**3 / min(gemm) / 1e9}


def _multi_crop_cases(device, quick, compile_):
    B, N = (4, 4) if quick else (32, 8)
    images, boxes, flips = multi_crop_bench._case(B, 384, 512, N, 224, device)
    for out_dtype in (torch.float32, torch.bfloat16):
        names = ["lmcl", "eager"] + (["compiled"] if compile_ else [])
        contenders = {n: multi_crop_bench._contender(n, images, boxes, flips, (224, 224), out_dtype) for n in names}
        nbytes = multi_crop_bytes(boxes, 3, (224, 224), 1, torch.finfo(out_dtype).bits // 8)
        yield (f"multi_crop B={B} uint8 384x512 N={N} 224^2 -> {str(out_dtype)[6:]}", contenders, {"bytes": nbytes})


def _crop_saliency_cases(device, quick, compile_):
    saliency, boxes = crop_saliency_bench.make_inputs(device)
    contenders = {"lmcl": lambda: ops.crop_saliency(saliency, boxes),
                  "eager": lambda: crop_saliency_bench.eager_table(saliency, boxes)}
    if compile_:
        compiled = crop_saliency_bench.compiled_table()
        contenders["compiled"] = lambda: compiled(saliency, boxes)
    B, H, W = saliency.shape
    yield (f"crop_saliency B={B} {H}x{W} N={boxes.shape[1]}", contenders,
           {"bytes": crop_saliency_bytes(B, H, W, boxes.shape[1])})


def _spectral_residual_cases(device, quick, compile_):
    B = 4 if quick else 32
    images = torch.randint(0, 256, (B, 384, 512, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    # spectral_residual is plain torch: "lmcl" is the eager function, the contender its compiled form.
    contenders = {"lmcl": lambda: ops.spectral_residual(images)}
    if compile_:
        compiled = torch.compile(ops.spectral_residual, fullgraph=True)
        contenders["compiled"] = lambda: compiled(images)
    yield f"spectral_residual B={B} uint8 384x512", contenders, {"bytes": spectral_residual_bytes(B, 384, 512)}


def _select_anchor_cases(device, quick, compile_):
    scores = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0)).to(device)

    def eager(s):
        return s.argmax(dim=1)  # first maximum, like the op (which also checks for NaN)

    contenders = {"lmcl": lambda: ops.select_anchor(scores), "eager": lambda: eager(scores)}
    if compile_:
        compiled = torch.compile(eager, fullgraph=True)
        contenders["compiled"] = lambda: compiled(scores)
    yield "select_anchor B=4096 N=16 float32", contenders, {"bytes": scores.numel() * 4 + 4096 * 8}


def _lmc_loss_cases(device, quick, compile_):
    shapes = [(64, 8)] if quick else [(64, 8), (512, 8)]
    for B, N in shapes:
        z, t, a = lmc_bench._inputs(B, N, 128, device)
        names = ["lmcl", "eager"] + (["compiled"] if compile_ else [])
        contenders = {n: lmc_bench._contender(n, z, t, a) for n in names}
        cost = lmc_loss_flops(B, N, 128)
        yield (f"lmc_loss fwd+bwd B={B} N={N} D=128 (M={B * N})", contenders,
               {"flops": cost["flops_fwd"] + cost["flops_bwd"]})


CASES = [_multi_crop_cases, _crop_saliency_cases, _spectral_residual_cases, _select_anchor_cases, _lmc_loss_cases]


def _header(device: str, rounds: int, limits: dict) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return (f"Device {name}, torch {torch.__version__}, {rounds} interleaved rounds; measured copy "
            f"{limits['copy_GB/s']:.3g} GB/s (read + write), float32 GEMM "
            f"{limits['fp32_gemm_TFLOP/s']:.3g} TFLOP/s.\n\n"
            "| case | contender | min ms | median ms | x lmcl (min) | achieved |\n|---|---|---|---|---|---|")


def _row_line(r: dict) -> str:
    achieved = f"{r['GB/s']:.3g} GB/s" if "GB/s" in r else f"{r['TFLOP/s']:.3g} TFLOP/s"
    return (f"| {r['case']} | {r['contender']} | {r['min_ms']:.3f} | {r['median_ms']:.3f} | "
            f"{r['vs_lmcl_min']:.2f} | {achieved} |")


def run(device: str, quick: bool, compile_: bool, rounds: int, out: str = "") -> dict:
    """Every case in turn; the table is printed (and the JSON rewritten) case by case, so a run stopped by a
    time limit still leaves the cases it finished."""
    limits = device_limits(device, quick)
    result = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "rounds": rounds, "limits": limits, "rows": []}
    print(_header(device, rounds, limits), flush=True)
    for make in CASES:
        for case, contenders, cost in make(device, quick, compile_):
            times = time_interleaved(contenders, device, rounds)
            base = min(times["lmcl"])
            for name, t in times.items():
                row = {"case": case, "contender": name, "min_ms": min(t), "median_ms": statistics.median(t),
                       "vs_lmcl_min": min(t) / base}
                if "bytes" in cost:
                    row["GB/s"] = cost["bytes"] / min(t) / 1e6
                if "flops" in cost:
                    row["TFLOP/s"] = cost["flops"] / min(t) / 1e9
                result["rows"].append(row)
                print(_row_line(row), flush=True)
            if out:
                with open(out, "w") as fh:
                    json.dump(result, fh, indent=1)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="", help="write the rows as JSON here")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out torch.compile")
    args = p.parse_args(argv)
    run(args.device, args.quick, args.compile, args.rounds, args.out)


if __name__ == "__main__":
    main()
