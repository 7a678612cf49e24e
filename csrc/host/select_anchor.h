// select_anchor host setup for every backend and the grid runner: the NaN ValueError, one launch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "kernels/select_anchor.h"

namespace lmcl {

// The ValueError for a NaN in row `row` of scores (the CPU kernel flags the row with -1); the text of the
// GPU's device-side assert.
[[noreturn]] inline void raise_select_anchor_nan(int64_t row) {
  raise_kernel_check(LMCL_SELECT_ANCHOR_NAN_FORMAT, static_cast<long long>(row));
}

// select_anchor through a launcher, after check_select_anchor_args: one launch that checks for NaN with a
// device-side assert (check = true, as the CUDA op always does: no device->host read) or leaves -1 in NaN
// rows (check = false, the grid-runner tests).
template <typename Launcher>
at::Tensor select_anchor_grid(const at::Tensor& scores, const Launcher& launcher, bool check) {
  const int64_t B = scores.size(0);
  at::Tensor out = at::empty({B}, scores.options().dtype(at::kLong));
  if (B == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "lmcl::select_anchor_grid", [&] {
    using Body = SelectAnchorBody<scalar_t, at::opmath_type<scalar_t>>;
    launcher(Body{},
             typename Body::Params{scores.data_ptr<scalar_t>(), scores.stride(0), scores.stride(1),
                                   out.data_ptr<int64_t>(), B, scores.size(1), check},
             B);
  });
  return out;
}

}  // namespace lmcl
