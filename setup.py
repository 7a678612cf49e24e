"""Build of the lmcl_fast extension.

CPU kernels are always built (C++17, OpenMP). CUDA kernels are added when a CUDA build of torch and
nvcc are both present (LMCL_CUDA=auto), forced with LMCL_CUDA=1 (error if impossible) or skipped with
LMCL_CUDA=0. TORCH_CUDA_ARCH_LIST picks the archs (default DEFAULT_CUDA_ARCHS). DEBUG=1 builds -O0 -g.
"""
import glob
import importlib.util
import os
import shutil

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# sm_80 code (runs on every 8.x GPU: A100, A10, L4, L40S, RTX 30xx/40xx), sm_90 code (H100/H200), and
# compute_90 PTX, which the driver compiles for GPUs newer than the newest listed arch (Blackwell and on).
# CMakeLists.txt's LMCL_CUDA_ARCHITECTURES default is the same list.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _check_torch_version():
    """The package's own torch check (lmcl_fast/_torch_compat.py), loaded by path: importing lmcl_fast would
    load the extension this build is about to make."""
    spec = importlib.util.spec_from_file_location("_lmcl_torch_compat", os.path.join(ROOT, "lmcl_fast",
                                                                                    "_torch_compat.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.check_torch_version()


def _nvcc_available() -> bool:
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return True
    return shutil.which("nvcc") is not None


def _want_cuda() -> bool:
    mode = os.environ.get("LMCL_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and _nvcc_available()
    if mode in ("0", "off", "false"):
        return False
    if mode in ("1", "on", "true"):
        if not possible:
            raise RuntimeError(
                "LMCL_CUDA=1 but the CUDA extension cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, nvcc found={_nvcc_available()}"
            )
        return True
    if mode != "auto":
        raise ValueError(f"LMCL_CUDA must be auto, 1 or 0, got {mode!r}")
    return possible


def _sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def nvcc_flags(debug: bool) -> list:
    """Our nvcc options for csrc/cuda/*.cu; BuildExtension adds torch's COMMON_NVCC_FLAGS
    (-D__CUDA_NO_HALF_OPERATORS__ etc.), -fPIC and the -gencode flags of TORCH_CUDA_ARCH_LIST.
    nvcc has no -g0 (it rejects it): no debug information is its default."""
    return (["-O0", "-g"] if debug else ["-O3"]) + ["-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]


def make_extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    with_cuda = _want_cuda()
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS) if with_cuda else ""
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    # -ffp-contract=off: the AVX2 clones (csrc/cpu/simd.h) round like the baseline build and the grid runner,
    # instead of fusing a * b + c into an FMA where the compiler sees fit.
    cxx = opt + ["-std=c++17", "-fopenmp", "-ffp-contract=off", f'-DLMCL_CUDA_ARCHS="{archs}"']
    sources = ["csrc/init.cpp"] + _sources("csrc/ops/*.cpp") + _sources("csrc/cpu/*.cpp")
    kwargs = dict(
        name="lmcl_fast._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        return CUDAExtension(
            sources=sources + _sources("csrc/cuda/*.cu"),
            define_macros=[("LMCL_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags(debug)},
            **kwargs,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


_check_torch_version()
setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
