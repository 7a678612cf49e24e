// L2 normalisation of one embedding row (x / max(||x||, eps)) and its backward, host/device.
#pragma once

#include <cstdint>

#include "kernels/fast_math.h"

namespace lmcl {
namespace lmc {

// x / max(||x||, eps) of one strided row of D values, written contiguous in acc_t.
template <typename scalar_t, typename acc_t>
LMCL_HD inline void normalize_row(const scalar_t* x, int64_t stride, int64_t D, acc_t eps, acc_t* out) {
  acc_t sq = acc_t(0);
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(x[d * stride]);
    sq += v * v;
  }
  const acc_t norm = sqrt_acc(sq);
  const acc_t inv = acc_t(1) / (norm > eps ? norm : eps);
  for (int64_t d = 0; d < D; ++d) {
    out[d] = static_cast<acc_t>(x[d * stride]) * inv;
  }
}

// Backward of normalize_row: with g = dL/dx_hat (plus an optional second contribution g2),
// dx = (g - x_hat (x_hat . g)) / ||x|| when ||x|| > eps, else g / eps; times the upstream grad.
template <typename scalar_t, typename acc_t>
LMCL_HD inline void normalize_row_backward(const scalar_t* x, int64_t stride, int64_t D, acc_t eps, const acc_t* g,
                                           const acc_t* g2, acc_t grad_out, scalar_t* out) {
  acc_t sq = acc_t(0);
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(x[d * stride]);
    sq += v * v;
  }
  const acc_t norm = sqrt_acc(sq);
  if (!(norm > eps)) {
    for (int64_t d = 0; d < D; ++d) {
      out[d] = static_cast<scalar_t>(grad_out * (g[d] + (g2 ? g2[d] : acc_t(0))) / eps);
    }
    return;
  }
  const acc_t inv = acc_t(1) / norm;
  acc_t dot = acc_t(0);
  for (int64_t d = 0; d < D; ++d) {
    dot += static_cast<acc_t>(x[d * stride]) * inv * (g[d] + (g2 ? g2[d] : acc_t(0)));
  }
  for (int64_t d = 0; d < D; ++d) {
    const acc_t xh = static_cast<acc_t>(x[d * stride]) * inv;
    const acc_t gd = g[d] + (g2 ? g2[d] : acc_t(0));
    out[d] = static_cast<scalar_t>(grad_out * (gd - xh * dot) * inv);
  }
}

}  // namespace lmc
}  // namespace lmcl
