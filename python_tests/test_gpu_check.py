"""bench/gpu_check.sh and bench/gpu_bench.py stay runnable where no GPU is (the day one is lent, one command
must work): the script parses and lists every step, and every benchmark case builds and runs its lmcl
contender on the CPU at small size."""
import os
import subprocess
import sys

import pytest
import torch

from lmcl_testing import ROOT

SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")


def test_gpu_check_script_parses_and_lists_every_step(tmp_path):
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    out = subprocess.run(["bash", SCRIPT, "--dry-run", str(tmp_path)], capture_output=True, text=True, check=True)
    steps = [line.split(",")[0].lstrip("[") for line in out.stdout.splitlines()]
    assert steps == ["build", "tests", "bench", "memcheck", "racecheck", "initcheck"], out.stdout
    assert "-k cuda and not compiles" in out.stdout and "gpu_bench.py" in out.stdout


@pytest.fixture(scope="module")
def gpu_bench():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gpu_bench
        yield gpu_bench
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))


def test_every_benchmark_case_runs_on_the_cpu(gpu_bench):
    cases = []
    for make in gpu_bench.CASES:
        for case, contenders, cost in make("cpu", True, False):
            assert "lmcl" in contenders and ("bytes" in cost or "flops" in cost), case
            contenders["lmcl"]()
            cases.append(case.split()[0])
    assert set(cases) == {"multi_crop", "crop_saliency", "spectral_residual", "select_anchor", "lmc_loss"}


def test_benchmark_table_lines(gpu_bench):
    times = gpu_bench.time_interleaved({"lmcl": lambda: None, "eager": lambda: None}, "cpu", 3)
    assert [len(t) for t in times.values()] == [3, 3]
    header = gpu_bench._header("cpu", 3, {"copy_GB/s": 10.0, "fp32_gemm_TFLOP/s": 0.3})
    assert "copy 10 GB/s" in header and header.endswith("|---|---|---|---|---|---|")
    row = {"case": "c", "contender": "eager", "min_ms": 2.0, "median_ms": 2.5, "vs_lmcl_min": 2.0, "TFLOP/s": 0.1}
    assert gpu_bench._row_line(row) == "| c | eager | 2.000 | 2.500 | 2.00 | 0.1 TFLOP/s |"
