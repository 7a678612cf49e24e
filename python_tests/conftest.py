"""Shared test helpers: devices, seeds, the tolerance table, and the grid-runner build."""
import glob
import os

import pytest
import torch

from lmcl_testing import PHOTOS, ROOT, TOLERANCES


@pytest.fixture(scope="session")
def tolerances():
    """TOLERANCES as a fixture (the same table tests can import from lmcl_testing)."""
    return TOLERANCES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def photos_dir():
    if not os.path.isdir(PHOTOS):
        pytest.skip(f"pristine photos not found at {PHOTOS}")
    return PHOTOS


@pytest.fixture(scope="session")
def grid_runner():
    """Build python_tests/grid_runner/*.cpp once: CPU stand-ins of every CUDA launcher, registered as
    torch.ops.lmcl_grid.* ops (see grid_runner.h)."""
    from torch.utils.cpp_extension import load

    sources = sorted(glob.glob(os.path.join(ROOT, "python_tests", "grid_runner", "*.cpp")))
    if not sources:
        pytest.skip("no grid-runner sources")
    # Build inside this checkout: torch's default extension cache is shared by every checkout on the
    # machine, so two checkouts with different grid-runner sources would load each other's library.
    build_dir = os.path.join(ROOT, "build", "grid_runner")
    os.makedirs(build_dir, exist_ok=True)
    load(
        name="lmcl_grid_runner",
        sources=sources,
        build_directory=build_dir,
        extra_include_paths=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "python_tests", "grid_runner")],
        extra_cflags=["-O2", "-g0", "-std=c++17"],
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.lmcl_grid
