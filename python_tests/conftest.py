"""Shared test helpers: devices, seeds, the tolerance table, and the grid-runner build."""
import glob
import os

import pytest
import torch

from lmcl_testing import PHOTOS, ROOT, TOLERANCES

# Processes the tests start (mp.spawn ranks, torchrun, the CLI) print every thread's Python stack if a signal
# kills them, into the output pytest shows for a failure.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")


@pytest.fixture(scope="session")
def tolerances():
    """TOLERANCES as a fixture (the same table tests can import from lmcl_testing)."""
    return TOLERANCES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module's tests: the tiny CNN on 32-pixel crops is too small to split, and on
    2 cores OpenMP's fork/join costs more than it saves (the training tests ran 2x faster on one thread in the
    sandbox); it is also the thread count of the torchrun workers (OMP_NUM_THREADS=1) in test_ddp."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synthetic(photos_dir, tmp_path_factory):
    """A small synthetic IQA set shared by the training tests (read-only: copy it to modify it):
    4 contents x (pristine + 5 types x 2 levels) = 44 images of 64 x 64, as (root, csv path)."""
    from lmcl_fast.data import make_synthetic

    out = str(tmp_path_factory.mktemp("synthetic"))
    return out, make_synthetic(photos_dir, out, levels=2, max_images=4, size=64)


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
