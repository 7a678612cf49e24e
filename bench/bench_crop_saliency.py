"""crop_saliency: lmcl vs eager (per-box slice means; a float64 cumsum table) vs torch.compile of the
eager table; spectral_residual timing for information."""
import functools

import pytest
import torch
import torch.nn.functional as F

from _cost import crop_saliency_bytes, spectral_residual_bytes
from _harness import record, run_synced
from lmcl_fast import ops

B, H, W, N = 32, 384, 512, 64


def eager_loop(saliency, boxes):
    """The test reference's method (a slice mean per box), in float32."""
    rows = boxes.tolist()
    return torch.stack(
        [torch.stack([saliency[b, t : t + h, l : l + w].mean() for t, l, h, w in rows[b]]) for b in range(len(rows))]
    )


def eager_table(saliency, boxes):
    """The same algorithm as the op in eager ATen: float64 cumsum table, four gathers per box."""
    sat = F.pad(saliency.double().cumsum(2).cumsum(1), (1, 0, 1, 0)).flatten(1)
    t, l, h, w = boxes.long().unbind(-1)
    W1 = saliency.shape[2] + 1

    def at(r, c):
        return sat.gather(1, r * W1 + c)

    return ((at(t + h, l + w) - at(t, l + w) - at(t + h, l) + at(t, l)) / (h * w)).float()


@functools.lru_cache(maxsize=None)
def compiled_table():
    return torch.compile(eager_table, fullgraph=True)


def make_inputs(device):
    g = torch.Generator().manual_seed(0)
    saliency = torch.rand(B, H, W, generator=g)
    side = torch.randint(32, 385, (B, N, 1), generator=g)
    top = (torch.rand(B, N, 1, generator=g) * (H - side + 1)).floor().long()
    left = (torch.rand(B, N, 1, generator=g) * (W - side + 1)).floor().long()
    boxes = torch.cat([top, left, side, side], dim=-1)
    return saliency.to(device), boxes.to(device)


CONTENDERS = {"lmcl": ops.crop_saliency, "eager_loop": eager_loop, "eager_table": eager_table, "compiled": None}


@pytest.mark.benchmark(group=f"crop_saliency-B{B}-{H}x{W}-N{N}")
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_bench_crop_saliency(benchmark, bench_device, contender):
    saliency, boxes = make_inputs(bench_device)
    fn = CONTENDERS[contender] or compiled_table()
    fn(saliency, boxes)  # warm-up (and compilation) outside the timed region
    out = benchmark(run_synced(lambda: fn(saliency, boxes), bench_device))
    torch.testing.assert_close(out, ops.crop_saliency(saliency, boxes), rtol=1e-4, atol=1e-6)
    nbytes = crop_saliency_bytes(B, H, W, N)
    extra = dict(bytes=nbytes, shape=f"B={B} H={H} W={W} N={N}", contender=contender)
    if benchmark.stats is not None:
        extra["GB/s"] = nbytes / benchmark.stats.stats.min / 1e9
    record(benchmark, bench_device, **extra)


@pytest.mark.benchmark(group=f"spectral_residual-B{B}-{H}x{W}")
def test_bench_spectral_residual(benchmark, bench_device):
    images = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = images.to(bench_device)
    ops.spectral_residual(images)
    out = benchmark(run_synced(lambda: ops.spectral_residual(images), bench_device))
    assert out.shape == (B, H, W) and torch.isfinite(out).all()
    nbytes = spectral_residual_bytes(B, H, W)
    extra = dict(bytes=nbytes, shape=f"B={B} H={H} W={W} uint8 RGB")
    if benchmark.stats is not None:
        extra["GB/s"] = nbytes / benchmark.stats.stats.min / 1e9
    record(benchmark, bench_device, **extra)
