// select_anchor host/device math: the argmax of one score row (or -1 for a NaN) and its launch body.
// Shared by the CPU kernel, the CUDA kernel and the grid-runner test. Ties go to the lowest index; the CPU
// op turns a -1 into the ValueError of SPEC §1.3, the launch body into a device-side assert of the same text.
#pragma once

#include "kernels/check.h"
#include "kernels/common.h"

namespace lmcl {

template <typename scalar_t, typename acc_t>
LMCL_HD inline int64_t row_argmax_or_nan(const scalar_t* row, int64_t stride, int64_t N) {
  int64_t best = 0;
  acc_t best_value = static_cast<acc_t>(row[0]);
  if (best_value != best_value) {
    return -1;
  }
  for (int64_t k = 1; k < N; ++k) {
    const acc_t v = static_cast<acc_t>(row[k * stride]);
    if (v != v) {
      return -1;
    }
    // Strictly greater: an equal later score keeps the lower index.
    if (v > best_value) {
      best = k;
      best_value = v;
    }
  }
  return best;
}

// The error text of a NaN in row `row` of scores (printf format, one long long).
#define LMCL_SELECT_ANCHOR_NAN_FORMAT "select_anchor: scores must not contain NaN, got NaN in row %lld"

// One row per item of a grid-stride loop over B. A NaN row is a device-side assert (check, the CUDA op)
// or comes back as -1 (the grid-runner tests).
template <typename scalar_t, typename acc_t>
struct SelectAnchorBody {
  struct Params {
    const scalar_t* scores;  // [B, N], read through strides
    int64_t stride_b, stride_n;
    int64_t* out;            // [B], contiguous
    int64_t B, N;
    bool check;
  };

  static LMCL_HD void run(const Params& p, GridIndex g) {
    for (int64_t b = g.first(); b < p.B; b += g.stride()) {
      const int64_t best = row_argmax_or_nan<scalar_t, acc_t>(p.scores + b * p.stride_b, p.stride_n, p.N);
      if (p.check) {
        LMCL_KERNEL_CHECK(best >= 0, LMCL_SELECT_ANCHOR_NAN_FORMAT, static_cast<long long>(b));
      }
      p.out[b] = best;
    }
  }
};

}  // namespace lmcl
