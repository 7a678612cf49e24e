"""The performance table of bench/RESULTS.md, measured in one process: every case against its baseline,
interleaved round by round (so machine load hits both alike), with min and median, the load average
before and after, and the distance to this machine's limits (bytes/s vs a measured fill_ rate, GFLOP/s
vs a measured torch.mm rate).

    python bench/measure_table.py                 # all cases except M = 65,536 (about 3-4 min, quiet machine)
    python bench/measure_table.py --big           # also M = 65,536 (a fresh subprocess: +25-60 s, peak RSS)
    python bench/measure_table.py --only lmc_loss --rounds 30

Cases (2 torch threads unless said):
  multi_crop B=32 uint8 384x512x3, N=8 boxes (0.25..1 of the short side), 224x224, ImageNet mean/std,
    flips, float32 and bfloat16 output: ours vs the eager loop (per-crop slice, /255, F.interpolate,
    flip, normalise), end to end (fresh output every call, page faults included);
  the same, float32, channels-last output (the trainer's default layout): ours vs the eager loop followed
    by the layout copy a channels-last network needs;
  multi_crop B=4 (output buffer reused by the allocator), contiguous and channels-last output: ours vs
    out.fill_() on a buffer of that size;
  multi_crop backward (float32 images, B=32 case): ours vs eager autograd through the eager loop;
  lmc_loss fwd+bwd M=512 (B=64, N=8, D=128): ours vs eager, 2 threads and 1 thread, then both again
    with a spinning process keeping the second core busy; M=4096: ours vs torch.compile(eager).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cost import lmc_loss_flops, multi_crop_bytes  # noqa: E402
from _harness import device_name  # noqa: E402
from bench_lmc_loss import reference_lmc_loss  # noqa: E402

from lmcl_fast.ops import lmc_loss, multi_crop, sample_boxes  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = (224, 224)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def interleaved(contenders: dict, rounds: int, setup=None) -> dict:
    """Seconds per call of each contender, timed round-robin (setup(name) runs untimed before each call)."""
    times = {name: [] for name in contenders}
    for name, fn in contenders.items():  # warm-up
        if setup is not None:
            setup(name)
        fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            if setup is not None:
                setup(name)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def summary(times: list) -> tuple:
    return min(times), statistics.median(times)


def row(case: str, times: dict, ours: str, base: str, extra: str = "") -> str:
    o_min, o_med = summary(times[ours])
    b_min, b_med = summary(times[base])
    return (f"| {case} | {o_min * 1e3:.2f} / {o_med * 1e3:.2f} | {base}: {b_min * 1e3:.2f} / {b_med * 1e3:.2f} "
            f"| {b_min / o_min:.2f}x / {b_med / o_med:.2f}x | {extra} |")


# ---------------------------------------------------------------------------------------------------
# machine limits
# ---------------------------------------------------------------------------------------------------


def fill_rate(nbytes: int, rounds: int) -> float:
    """Bytes/s of buf.fill_() on a reused float32 buffer of nbytes (the write floor of a kernel)."""
    buf = torch.empty(nbytes // 4)
    times = interleaved({"fill": lambda: buf.fill_(1.0)}, rounds)["fill"]
    return nbytes / min(times)


def mm_rate(n: int, rounds: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    times = interleaved({"mm": lambda: torch.mm(a, b, out=out)}, rounds)["mm"]
    return 2 * n**3 / min(times)


# ---------------------------------------------------------------------------------------------------
# multi_crop
# ---------------------------------------------------------------------------------------------------


def crop_case(B, H=384, W=512, N=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=g)
    boxes = sample_boxes([H] * B, [W] * B, N, generator=g)
    flips = torch.rand((B, N), generator=g) < 0.5
    return images, boxes, flips


def eager_crops(x, box_rows, flip_rows, mean, std):
    """The eager loop on a [B, C, H, W] view: per crop slice, /255 (uint8), F.interpolate, flip, normalise."""
    out = []
    for b, boxes_b in enumerate(box_rows):
        for n, (t, l, h, w) in enumerate(boxes_b):
            crop = x[b : b + 1, :, t : t + h, l : l + w]
            crop = crop.float().div(255) if crop.dtype == torch.uint8 else crop
            crop = F.interpolate(crop, size=SIZE, mode="bilinear", align_corners=False, antialias=False)[0]
            crop = (crop.flip(-1) if flip_rows[b][n] else crop).sub(mean).div(std)
            out.append(crop)
    return torch.stack(out).view(len(box_rows), len(box_rows[0]), *out[0].shape)


def measure_multi_crop(rounds: int) -> list:
    lines = ["### multi_crop (2 threads)", "",
             "| case | ours min / median (ms) | baseline min / median (ms) | ratio min / median | notes |",
             "|---|---|---|---|---|"]
    mean_t = torch.tensor(MEAN).view(3, 1, 1)
    std_t = torch.tensor(STD).view(3, 1, 1)

    images, boxes, flips = crop_case(32)
    box_rows, flip_rows = boxes.tolist(), flips.tolist()
    x = images.permute(0, 3, 1, 2)
    for dtype in (torch.float32, torch.bfloat16):
        contenders = {
            "ours": lambda: multi_crop(images, boxes, SIZE, mean=MEAN, std=STD, flip=flips, out_dtype=dtype),
            "eager": lambda: eager_crops(x, box_rows, flip_rows, mean_t, std_t).to(dtype),
        }
        times = interleaved(contenders, rounds)
        nbytes = multi_crop_bytes(boxes, 3, SIZE, 1, dtype.itemsize)
        gbs = nbytes / min(times["ours"]) / 1e9
        lines.append(row(f"B=32 end to end, {str(dtype)[6:]}", times, "ours", "eager",
                         f"{gbs:.2f} GB/s useful bytes at min (fresh output: page faults included)"))

    nhwc = torch.channels_last
    contenders = {
        "ours": lambda: multi_crop(images, boxes, SIZE, mean=MEAN, std=STD, flip=flips, memory_format=nhwc),
        "eager": lambda: eager_crops(x, box_rows, flip_rows, mean_t, std_t).flatten(0, 1).contiguous(
            memory_format=nhwc),
    }
    times = interleaved(contenders, rounds)
    lines.append(row("B=32 end to end, float32, channels-last output", times, "ours", "eager",
                     "baseline: the eager loop, then the NHWC copy"))

    small_images, small_boxes, small_flips = crop_case(4, seed=1)
    for dtype, layout in ((torch.float32, None), (torch.bfloat16, None), (torch.float32, nhwc), (torch.bfloat16, nhwc)):
        buf = torch.empty((4, 8, 3, *SIZE), dtype=dtype)
        contenders = {
            "ours": lambda: multi_crop(small_images, small_boxes, SIZE, mean=MEAN, std=STD, flip=small_flips,
                                       out_dtype=dtype, memory_format=layout),
            "fill_": lambda: buf.fill_(1.0),
        }
        times = interleaved(contenders, rounds * 4)
        fill_gbs = buf.numel() * buf.element_size() / min(times["fill_"]) / 1e9
        ours_gbs = buf.numel() * buf.element_size() / min(times["ours"]) / 1e9
        o_min, o_med = summary(times["ours"])
        f_min, f_med = summary(times["fill_"])
        name = f"{str(dtype)[6:]}{', channels-last' if layout is not None else ''}"
        lines.append(f"| B=4 reused output, {name} | {o_min * 1e3:.2f} / {o_med * 1e3:.2f} "
                     f"| fill_: {f_min * 1e3:.2f} / {f_med * 1e3:.2f} | {o_min / f_min:.2f}x / {o_med / f_med:.2f}x "
                     f"the write floor | output written at {ours_gbs:.1f} GB/s vs fill_ {fill_gbs:.1f} GB/s |")

    # Backward: float32 images [B, C, H, W]; the forward (untimed) builds each graph anew.
    xf = images.permute(0, 3, 1, 2).float().div(255).contiguous()
    grad = torch.randn(32, 8, 3, *SIZE)
    state = {}

    def forward(name):
        xi = xf.detach().requires_grad_(True)
        if name == "ours":
            out = multi_crop(xi, boxes, SIZE, mean=MEAN, std=STD, flip=flips)
        else:
            out = eager_crops(xi, box_rows, flip_rows, mean_t, std_t)
        state[name] = (xi, out)

    def backward(name):
        xi, out = state[name]
        return torch.autograd.grad(out, xi, grad)

    times = interleaved({"ours": lambda: backward("ours"), "eager": lambda: backward("eager")}, rounds,
                        setup=forward)
    lines.append(row("B=32 backward (float32 images), autograd.grad only", times, "ours", "eager"))
    return lines


# ---------------------------------------------------------------------------------------------------
# lmc_loss
# ---------------------------------------------------------------------------------------------------


def loss_inputs(B, N=8, D=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, D, generator=g).requires_grad_(True)
    t = torch.randn(B, N, D, generator=g).requires_grad_(True)
    a = torch.randint(0, N, (B,), generator=g)
    return z, t, a


def loss_step(loss_fn, z, t, a):
    def run():
        z.grad = None
        t.grad = None
        loss_fn(z, a, t).backward()

    return run


def ours_loss(z, a, t):
    return lmc_loss(z, a, t, tau=0.1, intra_weight=0.5)


def measure_lmc_loss(rounds: int, mm_flops: float) -> list:
    lines = ["### lmc_loss forward + backward (D=128, teacher with grad)", "",
             "| case | ours min / median (ms) | baseline min / median (ms) | ratio min / median | notes |",
             "|---|---|---|---|---|"]
    z, t, a = loss_inputs(64)
    cost = lmc_loss_flops(64, 8, 128)
    flops = cost["flops_fwd"] + cost["flops_bwd"]
    for threads in (2, 1):
        torch.set_num_threads(threads)
        times = interleaved({"ours": loss_step(ours_loss, z, t, a), "eager": loss_step(reference_lmc_loss, z, t, a)},
                            rounds * 5)
        lines.append(row(f"M=512, {threads} thread(s)", times, "ours", "eager",
                         f"{flops / min(times['ours']) / 1e9:.0f} GFLOP/s (torch.mm {mm_flops / 1e9:.0f})"))
    torch.set_num_threads(2)

    z, t, a = loss_inputs(512)
    cost = lmc_loss_flops(512, 8, 128)
    flops = cost["flops_fwd"] + cost["flops_bwd"]
    torch._dynamo.reset()
    compiled = torch.compile(reference_lmc_loss)
    times = interleaved({"ours": loss_step(ours_loss, z, t, a), "compiled": loss_step(compiled, z, t, a)}, rounds)
    lines.append(row("M=4096, 2 threads", times, "ours", "compiled",
                     f"{flops / min(times['ours']) / 1e9:.0f} GFLOP/s (torch.mm {mm_flops / 1e9:.0f})"))
    return lines


def measure_spinning(rounds: int) -> list:
    """M=512 with a spinning process on the second core: 2-thread vs 1-thread median of ours."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        z, t, a = loss_inputs(64)
        step = loss_step(ours_loss, z, t, a)
        times = {}
        for _ in range(rounds):
            for threads in (2, 1):
                torch.set_num_threads(threads)
                times.setdefault(threads, []).extend(interleaved({"ours": step}, 5)["ours"])
    finally:
        spinner.kill()
        spinner.wait()
        torch.set_num_threads(2)
    two, one = summary(times[2]), summary(times[1])
    return [f"| M=512 with a spinning process, ours 2 threads vs 1 thread | {two[0] * 1e3:.2f} / {two[1] * 1e3:.2f} "
            f"| 1 thread: {one[0] * 1e3:.2f} / {one[1] * 1e3:.2f} | median 2t/1t = {two[1] / one[1]:.2f} | "
            f"target: within 2x |"]


BIG = """
import time, torch
from lmcl_fast.ops import lmc_loss
torch.set_num_threads(2)
def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
g = torch.Generator().manual_seed(0)
z = torch.randn(8192, 8, 128, generator=g).requires_grad_(True)
t = torch.randn(8192, 8, 128, generator=g).requires_grad_(True)
a = torch.randint(0, 8, (8192,), generator=g)
before = status_mib("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS: torch's import peak must not hide the op's
s = time.perf_counter()
lmc_loss(z, a, t).backward()
print(time.perf_counter() - s, status_mib("VmHWM") - before)
"""


def measure_big(mm_flops: float) -> list:
    out = subprocess.run([sys.executable, "-c", BIG], capture_output=True, text=True, check=True).stdout.split()
    seconds, extra_mib = float(out[0]), float(out[1])
    cost = lmc_loss_flops(8192, 8, 128)
    gflops = (cost["flops_fwd"] + cost["flops_bwd"]) / seconds / 1e9
    return [f"| M=65,536, 2 threads (fresh process, one call) | {seconds:.1f} s | | | {gflops:.0f} GFLOP/s "
            f"(torch.mm {mm_flops / 1e9:.0f}); peak RSS +{extra_mib:.0f} MiB |"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", default="multi_crop,lmc_loss,spin", help="comma list of multi_crop,lmc_loss,spin")
    parser.add_argument("--big", action="store_true", help="also M = 65,536 (fresh subprocess)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    torch.set_num_threads(2)
    before = loadavg()
    fill = fill_rate(4 * 8 * 3 * 224 * 224 * 4, 20)
    mm = mm_rate(2048, 5)
    lines = [f"Machine: {device_name('cpu')}; torch {torch.__version__}; load average before: {before}", "",
             f"fill_ on a reused 19 MB float32 buffer: {fill / 1e9:.1f} GB/s; torch.mm 2048^3 float32: "
             f"{mm / 1e9:.0f} GFLOP/s (2 threads)", ""]
    if "multi_crop" in only:
        lines += measure_multi_crop(args.rounds) + [""]
    if "lmc_loss" in only:
        lines += measure_lmc_loss(args.rounds, mm) + [""]
    if "spin" in only:
        lines += ["| case | 2 threads min / median (ms) | 1 thread min / median (ms) | ratio | |",
                  "|---|---|---|---|---|"]
        lines += measure_spinning(max(3, args.rounds // 2)) + [""]
    if args.big:
        lines += ["| case | time | | | |", "|---|---|---|---|---|"] + measure_big(mm) + [""]
    lines.append(f"load average after: {loadavg()}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
