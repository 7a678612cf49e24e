"""Soak (issue 15): the tiny model trains on images of varying sizes through each decoder while bench/soak.py
records the process's RSS after every step; resident memory must level off. CI runs a short version;
LMCL_SOAK_STEPS=1000 (or more) runs the long one (its figures are in bench/RESULTS.md)."""
import json
import os
import subprocess
import sys

import pytest

from lmcl_fast.data import dali_available
from lmcl_testing import ROOT

STEPS = int(os.environ.get("LMCL_SOAK_STEPS", "60"))
# Short runs: the last half may still hold allocator and decoder-buffer warm-up, so only a gross leak (more than
# ~0.5 MiB per step) fails. Long runs: the least-squares slope over the last half must be flat.
MAX_GROWTH_LAST_HALF_MIB = 24.0
MAX_SLOPE_MIB_PER_1000_STEPS = 5.0


@pytest.mark.parametrize("decoder", ["pillow", "dali"])
def test_rss_levels_off(decoder, tmp_path):
    if decoder == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "soak.py"), "--decoder", decoder, "--steps",
                           str(STEPS), "--json", str(out)], env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    summary = {k: v for k, v in result.items() if k != "rss_every_10_steps_mib"}
    print(f"soak {decoder}: {summary}")
    assert result["steps"] == STEPS
    assert result["growth_last_half_mib"] <= MAX_GROWTH_LAST_HALF_MIB, summary
    if STEPS >= 1000:
        assert result["slope_last_half_mib_per_1000_steps"] <= MAX_SLOPE_MIB_PER_1000_STEPS, summary
