// Shared by every kernel header: LMCL_HD, ceil_div, clamp_value and the grid index.
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
// gridDim (csrc/cuda/launch.cuh); the CPU grid runner fills it by looping over every (block, thread)
// of the launch. A kernel Body is a struct with `Params` and `static LMCL_HD void run(const Params&,
// GridIndex)`, a grid-stride loop over its items.
struct GridIndex {
  int64_t block;
  int64_t thread;
  int64_t block_dim;
  int64_t grid_dim;
  LMCL_HD int64_t first() const { return block * block_dim + thread; }
  LMCL_HD int64_t stride() const { return block_dim * grid_dim; }
};

}  // namespace lmcl
