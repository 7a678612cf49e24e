// CudaGridLauncher: the launcher interface of csrc/host/launch.h on the GPU. It runs a kernel Body over
// a 1-D grid on the current stream; the same Body and host code run on the CPU in the grid-runner tests
// (python_tests/grid_runner), so the index mapping the GPU uses is the one those tests check.
#pragma once

// c10's stream header, not ATen/cuda/CUDAContext.h: the latter pulls in cuSPARSE/cuBLAS headers,
// which a toolkit without those libraries (and the compile-only check in test_build.py) lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "host/launch.h"
#include "kernels/common.h"

namespace lmcl {

template <typename Body>
__global__ void grid_kernel(const typename Body::Params params) {
  Body::run(params, GridIndex{static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
                              static_cast<int64_t>(blockDim.x), static_cast<int64_t>(gridDim.x)});
}

struct CudaGridLauncher {
  using Guard = c10::cuda::CUDAGuard;
  GridShape shape;

  template <typename Body>
  void operator()(Body, const typename Body::Params& params, int64_t items) const {
    const LaunchConfig config = shape.cover(items);
    if (config.blocks == 0) {
      return;
    }
    grid_kernel<Body><<<static_cast<unsigned>(config.blocks), static_cast<unsigned>(config.threads), 0,
                        c10::cuda::getCurrentCUDAStream()>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace lmcl
