"""The build itself: OpenMP really on, the library loads, and every .cu file compiles with nvcc."""
import glob
import os
import shutil
import subprocess
import sysconfig

import pytest
import torch

import lmcl_fast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info_reports_parallel_openmp_build():
    info = lmcl_fast.build_info()
    assert info["openmp"] is True, info
    assert info["optimized"] is True, info
    # at::parallel_for must really fan out (a build without -fopenmp silently runs on one thread).
    if torch.get_num_threads() > 1:
        assert info["parallel_for_threads_used"] > 1, info
    assert info["cuda"] == (torch.version.cuda is not None and torch.cuda.is_available()) or not info["cuda"]


def _nvcc():
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(cuda_home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("cu_file", CU_FILES, ids=[os.path.basename(f) for f in CU_FILES])
def test_cu_file_compiles_for_sm90(cu_file, tmp_path):
    """Compile-only check: catches host-only calls in kernels/ headers and CUDA syntax errors on
    machines with no GPU. Uses torch's include paths, as the real CUDA build does."""
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()] + [
        f"-I{os.path.join(ROOT, 'csrc')}",
        f"-I{sysconfig.get_paths()['include']}",
    ]
    cmd = [
        _nvcc(), "-c", cu_file, "-o", str(tmp_path / "out.o"), "-arch=sm_90", "-std=c++17",
        "--expt-relaxed-constexpr", "-DLMCL_WITH_CUDA=1", "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__", "-w", *includes,
    ]
    # A CPU build of torch ships the c10/cuda headers but not the header its CMake generates for
    # them; it only holds Windows export macros, so skip it there.
    if not any(os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in include_paths()):
        cmd.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed on {os.path.basename(cu_file)}:\n{result.stderr[-4000:]}"
