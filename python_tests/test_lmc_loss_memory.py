"""SPEC §1.4 memory contract: forward + backward at M = 65,536 (B = 8192, N = 8), D = 128, float32 on the
CPU adds less than 2 GiB to the process's peak resident memory (an [M, M] float32 matrix alone is
16 GiB). Measured with ru_maxrss in a fresh subprocess, so nothing else shares the peak."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import json, resource, time
    import torch
    from lmcl_fast.ops import lmc_loss

    def peak_bytes():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    B, N, D = 8192, 8, 128
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, N, D, generator=g).requires_grad_(True)
    t = torch.randn(B, N, D, generator=g).requires_grad_(True)
    a = torch.randint(0, N, (B,), generator=g)
    # Warm up library state (thread pools, BLAS buffers) on a small batch before the baseline.
    lmc_loss(z[:64].detach().requires_grad_(True), a[:64], t[:64].detach()).backward()
    base = peak_bytes()
    start = time.perf_counter()
    loss = lmc_loss(z, a, t, tau=0.1)
    loss.backward()
    seconds = time.perf_counter() - start
    print(json.dumps(dict(base=base, peak=peak_bytes(), seconds=seconds, loss=loss.item(),
                          finite=bool(torch.isfinite(z.grad).all() and torch.isfinite(t.grad).all()))))
    """
)


@pytest.mark.slow
def test_forward_backward_at_m65536_adds_under_2gib(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    grown = stats["peak"] - stats["base"]
    print(f"lmc_loss M=65536 D=128: peak RSS grew {grown / 2**20:.0f} MiB, fwd+bwd {stats['seconds']:.1f} s")
    assert stats["finite"]
    assert grown < 2 * 2**30, stats
