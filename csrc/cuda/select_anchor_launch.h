// Host side of the select_anchor CUDA launch: tensors -> Params, the launch config, and the one
// device->host read of the NaN check. Host-only (ATen, no CUDA API), shared with the grid-runner tests.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

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

// select_anchor through a grid launcher (CudaGridLauncher or the tests' HostGridLauncher), after
// check_select_anchor_args: one launch, then (check = true, as the CUDA op always does) the NaN check.
template <typename Launcher>
at::Tensor select_anchor_grid(const at::Tensor& scores, const Launcher& launcher, int64_t threads, int64_t max_blocks,
                              bool check) {
  const int64_t B = scores.size(0);
  at::Tensor out = at::empty({B}, scores.options().dtype(at::kLong));
  if (B == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "lmcl::select_anchor_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launcher(SelectAnchorBody<scalar_t, acc_t>{}, select_anchor_params<scalar_t, acc_t>(scores, out),
             select_anchor_config(B, threads, max_blocks));
  });
  if (check) {
    check_select_anchor_flags(out);
  }
  return out;
}

}  // namespace lmcl
