// select_anchor: metadata checks shared by the CPU and CUDA kernels (SPEC §1.3).
#pragma once

#include <ATen/ATen.h>

namespace lmcl {

// scores floating [B, N] with N >= 1.
void check_select_anchor_args(const at::Tensor& scores);

// The ValueError for a NaN in row `row` of scores (the kernels flag the row with -1). Inline so the
// grid-runner tests, which do not link the library, raise through the same code as the CUDA op.
[[noreturn]] inline void raise_select_anchor_nan(int64_t row) {
  TORCH_CHECK_VALUE(false, "select_anchor: scores must not contain NaN, got NaN in row ", row);
  TORCH_INTERNAL_ASSERT(false, "unreachable");
}

}  // namespace lmcl
