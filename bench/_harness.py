"""Helpers shared by the benchmarks: every result records the machine it ran on.

Import them as `from _harness import record` (not from conftest: python_tests/ has a conftest.py too, and
pytest imports both as the module `conftest`)."""
import os
import platform

import torch


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def record(benchmark, device: str, **extra):
    """Attach the machine facts and any cost figures (bytes, flops) to a benchmark result."""
    benchmark.extra_info.update(
        device=device_name(device), torch_threads=torch.get_num_threads(), torch=torch.__version__, **extra
    )


def run_synced(fn, device: str):
    """Wrap fn so CUDA timings include the kernel (synchronise inside the timed callable)."""
    if not device.startswith("cuda"):
        return fn

    def synced():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return synced


BENCH_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
