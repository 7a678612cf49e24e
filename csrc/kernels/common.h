// Shared by every kernel header: host/device annotations, small integer helpers, and the grid index
// type that lets one per-thread body run both as a CUDA kernel and on the CPU (the grid runner test).
// Rules for csrc/kernels/*.h: no ATen types, no allocation, no exceptions, no host-only std:: calls.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#define LMCL_HD C10_HOST_DEVICE

namespace lmcl {

template <typename T>
LMCL_HD inline T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

template <typename T>
LMCL_HD inline T clamp_value(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Position of one thread in a 1-D grid. On the GPU it is filled from blockIdx/threadIdx/blockDim/
// gridDim; the CPU grid runner fills it by looping over every (block, thread) of the launch.
struct GridIndex {
  int64_t block;
  int64_t thread;
  int64_t block_dim;
  int64_t grid_dim;
  LMCL_HD int64_t first() const { return block * block_dim + thread; }
  LMCL_HD int64_t stride() const { return block_dim * grid_dim; }
};

// A 1-D launch: `blocks` blocks of `threads` threads.
struct LaunchConfig {
  int64_t blocks;
  int64_t threads;
};

// Grid for a grid-stride loop over n items: enough blocks to give each item a thread, capped so the
// grid stays small; the loop covers the rest. Zero blocks for n == 0 (launchers return early).
inline LaunchConfig grid_stride_config(int64_t n, int64_t threads = 256, int64_t max_blocks = 4096) {
  const int64_t blocks = n <= 0 ? 0 : (ceil_div<int64_t>(n, threads) < max_blocks ? ceil_div<int64_t>(n, threads) : max_blocks);
  return LaunchConfig{blocks, threads};
}

}  // namespace lmcl
