// CudaGridLauncher: the launcher interface of csrc/host/launch.h on the GPU.
// It runs a kernel Body over a 1-D grid on the current stream; the same Body and host code run on the CPU in
// the grid-runner tests (python_tests/grid_runner), so the index mapping the GPU uses is the one those tests
// check.
#pragma once

// c10's stream header, not ATen/cuda/CUDAContext.h: the latter pulls in cuSPARSE/cuBLAS headers,
// which a toolkit without those libraries (and the compile-only check in test_build.py) lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>

#include "host/launch.h"
#include "kernels/common.h"
#include "kernels/row_groups.h"

namespace lmcl {

// __grid_constant__: the kernels index their parameters with run-time values (p.scale[c]); without it a
// copy of the parameter struct goes to local memory.
template <typename Body>
__global__ void grid_kernel(const __grid_constant__ typename Body::Params params) {
  Body::run(params, GridIndex{static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
                              static_cast<int64_t>(blockDim.x), static_cast<int64_t>(gridDim.x)});
}

// One lane's State from lane `lane ^ offset` of its warp, 32-bit word by word.
template <typename State>
__device__ __forceinline__ State shfl_xor_state(const State& s, int offset) {
  static_assert(sizeof(State) % sizeof(unsigned) == 0, "a row-group State must be whole 32-bit words");
  constexpr int kWords = sizeof(State) / sizeof(unsigned);
  unsigned words[kWords];
  memcpy(words, &s, sizeof(State));
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    words[i] = __shfl_xor_sync(0xffffffffu, words[i], offset);
  }
  State out;
  memcpy(&out, words, sizeof(State));
  return out;
}

// A row-group body (kernels/row_groups.h): one warp per row, grid-stride over the rows. The block size is
// a multiple of the warp, so every lane of a warp takes the same rows and the shuffles see the full warp.
template <typename Body>
__global__ void row_group_kernel(const __grid_constant__ typename Body::Params params) {
  static_assert(kRowLanes == 32, "a row group is one warp");
  const int lane = static_cast<int>(threadIdx.x) % kRowLanes;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kRowLanes;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x / kRowLanes;
  const int64_t rows = Body::rows(params);
  for (int64_t row = first; row < rows; row += step) {
    typename Body::State s = Body::partial(params, row, lane, kRowLanes);
#pragma unroll
    for (int offset = kRowLanes / 2; offset > 0; offset /= 2) {
      s = Body::combine(s, shfl_xor_state(s, offset));
    }
    Body::finish(params, row, lane, kRowLanes, s);
  }
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

  template <typename Body>
  void rows(Body, const typename Body::Params& params) const {
    const LaunchConfig config = shape.cover_rows(Body::rows(params));
    if (config.blocks == 0) {
      return;
    }
    row_group_kernel<Body><<<static_cast<unsigned>(config.blocks), static_cast<unsigned>(config.threads), 0,
                             c10::cuda::getCurrentCUDAStream()>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace lmcl
