// Host side of the select_anchor CUDA launch: tensors -> Params, the launch config, and the one
// device->host read of the NaN check. Host-only (ATen, no CUDA API), shared with the grid-runner tests.
#pragma once

#include <ATen/ATen.h>

#include "kernels/common.h"
#include "kernels/select_anchor.h"
#include "ops/select_anchor.h"

namespace lmcl {

inline LaunchConfig select_anchor_config(int64_t rows, int64_t threads = 256, int64_t max_blocks = 4096) {
  return grid_stride_config(rows, threads, max_blocks);
}

template <typename scalar_t, typename acc_t>
typename SelectAnchorBody<scalar_t, acc_t>::Params select_anchor_params(const at::Tensor& scores, at::Tensor& out) {
  typename SelectAnchorBody<scalar_t, acc_t>::Params p;
  p.scores = scores.data_ptr<scalar_t>();
  p.stride_b = scores.stride(0);
  p.stride_n = scores.stride(1);
  p.out = out.data_ptr<int64_t>();
  p.B = scores.size(0);
  p.N = scores.size(1);
  return p;
}

// Rows holding a NaN come back as -1: one device->host read of the first such row (argmin returns
// the first minimum), or -1 when there is none.
inline void check_select_anchor_flags(const at::Tensor& out) {
  const int64_t first = at::where(out.amin().lt(0), out.argmin(), -1).item<int64_t>();
  if (first >= 0) {
    raise_select_anchor_nan(first);
  }
}

}  // namespace lmcl
