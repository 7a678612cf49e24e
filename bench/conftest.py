"""Benchmark fixtures (helpers live in _harness.py)."""
import pytest

from _harness import BENCH_DEVICES


@pytest.fixture(params=BENCH_DEVICES)
def bench_device(request):
    return request.param
