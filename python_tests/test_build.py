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
    # CUDA kernels are built only against a CUDA torch (no GPU needed), and then report their archs.
    if info["cuda"]:
        assert torch.version.cuda is not None and info["cuda_archs"], info
    else:
        assert info["cuda_archs"] == "", info


def _nvcc():
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(cuda_home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def _setup_py_nvcc_flags(debug=False):
    """setup.py's own nvcc options (setup.py run with setuptools.setup stubbed out)."""
    import runpy
    from unittest import mock

    import setuptools

    with mock.patch.object(setuptools, "setup", lambda **kwargs: None):
        namespace = runpy.run_path(os.path.join(ROOT, "setup.py"))
    return namespace["nvcc_flags"](debug)


def _nvcc_command(source, output, debug=False):
    """The nvcc command BuildExtension would run for `source` in a CUDA build of setup.py: torch's
    COMMON_NVCC_FLAGS (-D__CUDA_NO_HALF_OPERATORS__ etc.), -fPIC, setup.py's flags, LMCL_WITH_CUDA and
    the extension defines, torch's include paths; sm_90 only (the default list's newest arch), to keep CI short."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    includes = [f"-I{p}" for p in include_paths()] + [
        f"-I{os.path.join(ROOT, 'csrc')}",
        f"-I{sysconfig.get_paths()['include']}",
    ]
    cmd = [
        _nvcc(), "-c", str(source), "-o", str(output), *COMMON_NVCC_FLAGS, "-Xcompiler", "-fPIC",
        *_setup_py_nvcc_flags(debug), "-arch=sm_90", "-DLMCL_WITH_CUDA=1", "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C", "-w", *includes,
    ]
    # A CPU build of torch ships the c10/cuda headers but not the header its CMake generates for
    # them; it only holds Windows export macros, so skip it there.
    if not any(os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in include_paths()):
        cmd.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return cmd


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("debug", [False, True], ids=["release", "debug"])
def test_setup_py_nvcc_flags_are_accepted(debug, tmp_path):
    """nvcc rejects options gcc takes (it once got -g0): setup.py's flags, both modes, on a tiny kernel."""
    source = tmp_path / "tiny.cu"
    source.write_text("__global__ void tiny(float* x) { x[threadIdx.x] += 1.0f; }\n")
    result = subprocess.run(_nvcc_command(source, tmp_path / "tiny.o", debug), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("cu_file", CU_FILES, ids=[os.path.basename(f) for f in CU_FILES])
def test_cu_file_compiles_for_sm90(cu_file, tmp_path):
    """Compile-only check, with the flags a CUDA build of setup.py passes: catches host-only calls in
    kernels/ headers, half/bf16 conversions that need the operators torch's flags switch off, and CUDA
    syntax errors on machines with no GPU."""
    result = subprocess.run(_nvcc_command(cu_file, tmp_path / "out.o"), capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed on {os.path.basename(cu_file)}:\n{result.stderr[-4000:]}"


@pytest.mark.skipif(_nvcc() is None or shutil.which("cmake") is None, reason="nvcc or cmake not found")
def test_cmake_cuda_archs_survive_torchs_override(tmp_path):
    """With a CUDA build of torch, find_package(Torch) sets CMAKE_CUDA_ARCHITECTURES to OFF (its -gencode flags
    go to the legacy CUDA_NVCC_FLAGS, which CUDA-language targets ignore), so a CMAKE_CUDA_ARCHITECTURES default
    would be dead and nvcc would build its own default arch. Configure as that torch leaves things (OFF) and
    check that the kernels still get setup.py's default archs: sm_80, and sm_90 with compute_90 PTX."""
    build = tmp_path / "build"
    cmd = ["cmake", "-S", ROOT, "-B", str(build), "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles",
           "-DLMCL_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=OFF", f"-DCMAKE_CUDA_COMPILER={_nvcc()}",
           f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rules = "".join(p.read_text() for p in build.rglob("*") if p.name in ("build.ninja", "flags.make"))
    assert "arch=compute_80,code=[sm_80]" in rules, rules[-2000:]
    assert "arch=compute_90,code=[compute_90,sm_90]" in rules, rules[-2000:]
