"""lmc_loss forward + backward: ours vs the eager reference (float32) vs torch.compile of that reference.

GFLOP/s count the similarity matmuls only (bench/_cost.py). At M = B*N = 16,384 the eager reference
needs several [M, M] float32 matrices (1 GiB each) for forward + backward, so only ours runs there
(RESULTS.md has one eager measurement made by hand). CUDA cases run only where CUDA exists.
"""

import pytest
import torch
import torch.nn.functional as F

from _cost import lmc_loss_flops
from _harness import record, run_synced
from lmcl_fast.ops import lmc_loss

TAU, INTRA, MW = 0.1, 0.5, 1.0


def reference_lmc_loss(z, anchor_idx, teacher, tau=TAU, intra_weight=INTRA, manifold_weight=MW):
    """python_tests/test_lmc_loss.py's reference (full [M, M] similarities + masks), in the inputs' dtype."""
    B, N, D = z.shape
    q = F.normalize(z, dim=-1, eps=1e-12).reshape(B * N, D)
    k = F.normalize(teacher, dim=-1, eps=1e-12).reshape(B * N, D)
    img = torch.arange(B, device=z.device).repeat_interleave(N)
    crop = torch.arange(N, device=z.device).repeat(B)
    same = img[:, None] == img[None, :]
    pos = same & (crop[:, None] == crop[None, :])
    sim = q @ k.T / tau
    weight = torch.where(pos | ~same, 1.0, intra_weight).to(z.dtype)
    lse = torch.logsumexp(sim + torch.log(weight), dim=1)
    l_man = (lse - sim[pos]).mean()
    anchors = q.reshape(B, N, D)[torch.arange(B, device=z.device), anchor_idx]
    sim_c = anchors @ q.T / tau
    own = img[None, :] == torch.arange(B, device=z.device)[:, None]
    neg = torch.logsumexp(sim_c.masked_fill(own, float("-inf")), dim=1)
    p = sim_c.reshape(B, B, N)[torch.arange(B, device=z.device), torch.arange(B, device=z.device)]
    terms = torch.logaddexp(p, neg[:, None]) - p
    keep = torch.ones(B, N, dtype=torch.bool, device=z.device)
    keep[torch.arange(B, device=z.device), anchor_idx] = False
    return terms[keep].sum() / (B * (N - 1)) + manifold_weight * l_man


def _inputs(B, N, D, device):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, N, D, generator=g).to(device).requires_grad_(True)
    t = torch.randn(B, N, D, generator=g).to(device).requires_grad_(True)
    a = torch.randint(0, N, (B,), generator=g).to(device)
    return z, t, a


def _step(loss_fn, z, t, a):
    def run():
        z.grad = None
        t.grad = None
        loss = loss_fn(z, a, t)
        loss.backward()
        return loss

    return run


def _contender(name, z, t, a):
    if name == "lmcl":
        return _step(lambda z_, a_, t_: lmc_loss(z_, a_, t_, tau=TAU, intra_weight=INTRA), z, t, a)
    if name == "eager":
        return _step(reference_lmc_loss, z, t, a)
    torch._dynamo.reset()
    fn = _step(torch.compile(reference_lmc_loss), z, t, a)
    fn()  # warm-up: compile outside the timed region
    return fn


def _bench(benchmark, name, B, N, D, device):
    z, t, a = _inputs(B, N, D, device)
    fn = run_synced(_contender(name, z, t, a), device)
    # Many short rounds: the minimum is what survives a noisy shared machine.
    benchmark.pedantic(fn, rounds=40 if B * N <= 4096 else 3, iterations=1, warmup_rounds=1)
    cost = lmc_loss_flops(B, N, D)
    seconds = benchmark.stats.stats.min if benchmark.stats else None
    extra = dict(contender=name, B=B, N=N, D=D, **cost)
    if seconds:  # absent with --benchmark-disable
        extra["gflops_fwd_bwd"] = (cost["flops_fwd"] + cost["flops_bwd"]) / seconds / 1e9
    record(benchmark, device, **extra)
    loss = fn()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", ["lmcl", "eager", "compiled"])
@pytest.mark.benchmark(group="lmc_loss-M512-D128-cpu")
def test_lmc_loss_m512_cpu(benchmark, name):
    _bench(benchmark, name, 64, 8, 128, "cpu")


@pytest.mark.parametrize("name", ["lmcl", "compiled"])
@pytest.mark.benchmark(group="lmc_loss-M4096-D128-cpu")
def test_lmc_loss_m4096_cpu(benchmark, name):
    if name == "compiled" and benchmark.disabled:
        pytest.skip("a second torch.compile of the reference (~30 s) is only worth it when timing")
    _bench(benchmark, name, 512, 8, 128, "cpu")


@pytest.mark.benchmark(group="lmc_loss-M16384-D128-cpu")
def test_lmc_loss_m16384_cpu(benchmark):
    _bench(benchmark, "lmcl", 2048, 8, 128, "cpu")


CUDA_SHAPES = [(64, 8), (512, 8), (2048, 8), (8192, 8)]  # M = 512 ... 65,536


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["lmcl", "eager", "compiled"])
@pytest.mark.parametrize("B, N", CUDA_SHAPES, ids=[f"M{b * n}" for b, n in CUDA_SHAPES])
def test_lmc_loss_cuda(benchmark, name, B, N):
    if name != "lmcl" and B * N > 16384:
        pytest.skip("the eager reference's [M, M] matrices do not fit at this size")
    benchmark.group = f"lmc_loss-M{B * N}-D128-cuda"
    _bench(benchmark, name, B, N, 128, "cuda")
