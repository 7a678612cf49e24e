// select_anchor host setup for every backend and the grid runner: NaN error text, one launch, NaN check.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "kernels/select_anchor.h"

namespace lmcl {

// The ValueError for a NaN in row `row` of scores (the kernels flag the row with -1).
[[noreturn]] inline void raise_select_anchor_nan(int64_t row) {
  TORCH_CHECK_VALUE(false, "select_anchor: scores must not contain NaN, got NaN in row ", row);
  TORCH_INTERNAL_ASSERT(false, "unreachable");
}

// Rows holding a NaN come back as -1: one device->host read of the first such row (argmin returns
// the first minimum), or -1 when there is none.
inline void check_select_anchor_flags(const at::Tensor& out) {
  const int64_t first = at::where(out.amin().lt(0), out.argmin(), -1).item<int64_t>();
  if (first >= 0) {
    raise_select_anchor_nan(first);
  }
}

// select_anchor through a launcher, after check_select_anchor_args: one launch, then (check = true, as
// the CUDA op always does) the NaN check.
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
                                   out.data_ptr<int64_t>(), B, scores.size(1)},
             B);
  });
  if (check) {
    check_select_anchor_flags(out);
  }
  return out;
}

}  // namespace lmcl
