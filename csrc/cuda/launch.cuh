// Launch a kernel Body (a struct with `Params` and `static LMCL_HD void run(const Params&, GridIndex)`)
// over a 1-D grid on the current stream. The same Body runs on the CPU in the grid-runner tests
// (python_tests/grid_runner), so the index mapping the GPU uses is the one those tests check.
#pragma once

// c10's stream header, not ATen/cuda/CUDAContext.h: the latter pulls in cuSPARSE/cuBLAS headers,
// which a toolkit without those libraries (and the compile-only check in test_build.py) lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/common.h"

namespace lmcl {

template <typename Body>
__global__ void grid_kernel(const typename Body::Params params) {
  Body::run(params, GridIndex{static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
                              static_cast<int64_t>(blockDim.x), static_cast<int64_t>(gridDim.x)});
}

template <typename Body>
void launch_grid(const typename Body::Params& params, LaunchConfig config) {
  if (config.blocks == 0) {
    return;
  }
  grid_kernel<Body><<<static_cast<unsigned>(config.blocks), static_cast<unsigned>(config.threads), 0,
                      c10::cuda::getCurrentCUDAStream()>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmcl
