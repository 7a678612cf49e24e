// select_anchor host/device math: the argmax of one score row (or -1 for a NaN) and its launch body.
// Shared by the CPU kernel, the CUDA kernel and the grid-runner test. Ties go to the lowest index; the ops
// turn a -1 into the ValueError of SPEC §1.3.
#pragma once

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

// One row per item of a grid-stride loop over B.
template <typename scalar_t, typename acc_t>
struct SelectAnchorBody {
  struct Params {
    const scalar_t* scores;  // [B, N], read through strides
    int64_t stride_b, stride_n;
    int64_t* out;            // [B], contiguous
    int64_t B, N;
  };

  static LMCL_HD void run(const Params& p, GridIndex g) {
    for (int64_t b = g.first(); b < p.B; b += g.stride()) {
      p.out[b] = row_argmax_or_nan<scalar_t, acc_t>(p.scores + b * p.stride_b, p.stride_n, p.N);
    }
  }
};

}  // namespace lmcl
