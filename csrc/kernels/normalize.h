// L2 normalisation of one embedding row (x / max(||x||, eps)) and its backward, as a lane's share of a row.
// Each function takes the lane's elements lane, lane + lanes, ... (kernels/row_groups.h), so that a warp can
// split a row on the GPU; with one lane (lane 0 of 1) they are the plain sequential loops.
#pragma once

#include <cstdint>

#include "kernels/fast_math.h"

namespace lmcl {
namespace lmc {

// ||x|| of one strided row. A row whose squares overflow (entries above ~1.8e19 in float32) is summed again scaled
// by its largest |x_d|, so it does not normalise to zeros; other rows take the plain sum only. NaN and Inf
// entries still give a NaN or Inf norm, as the plain formula does.
template <typename scalar_t, typename acc_t>
LMCL_HD inline acc_t row_norm(const scalar_t* x, int64_t stride, int64_t D) {
  acc_t sq = acc_t(0);
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(x[d * stride]);
    sq += v * v;
  }
  if (sq - sq == acc_t(0)) {  // finite: the common case
    return sqrt_acc(sq);
  }
  acc_t big = acc_t(0);
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(x[d * stride]);
    const acc_t a = v < acc_t(0) ? -v : v;
    big = a > big ? a : big;
  }
  if (!(big - big == acc_t(0)) || !(big > acc_t(0))) {  // an Inf entry (or all NaN): the plain result
    return sqrt_acc(sq);
  }
  const acc_t inv_big = acc_t(1) / big;
  acc_t scaled = acc_t(0);
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(x[d * stride]) * inv_big;
    scaled += v * v;
  }
  return big * sqrt_acc(scaled);
}


// ||x|| from the row's sum of squares (all lanes'); a sum that overflowed is redone scaled by row_norm.
template <typename scalar_t, typename acc_t>
LMCL_HD inline acc_t norm_from_squares(const scalar_t* x, int64_t stride, int64_t D, acc_t sq) {
  return sq - sq == acc_t(0) ? sqrt_acc(sq) : row_norm<scalar_t, acc_t>(x, stride, D);
}

// This lane's part of ||x||^2 for a strided row of D values.
template <typename scalar_t, typename acc_t>
LMCL_HD inline acc_t normalize_partial(const scalar_t* x, int64_t stride, int64_t D, int lane, int lanes) {
  acc_t sq = acc_t(0);
  for (int64_t d = lane; d < D; d += lanes) {
    const acc_t v = static_cast<acc_t>(x[d * stride]);
    sq += v * v;
  }
  return sq;
}

// The CPU's form of the row sums: kLanes lanes' partial sums at once, lane k taking the elements k, k + kLanes,
// ... as normalize_partial does. The lanes' accumulators are independent, so the loop vectorises (a single
// running sum cannot be reordered without -ffast-math); the total adds them in lane order.
template <int kLanes, typename acc_t, typename Term>
LMCL_HD inline acc_t lane_blocked_sum(int64_t D, const Term& term) {
  acc_t lanes[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      lanes[k] += term(d + k);
    }
  }
  for (int k = 0; d + k < D; ++k) {
    lanes[k] += term(d + k);
  }
  acc_t total = acc_t(0);
  for (int k = 0; k < kLanes; ++k) {
    total += lanes[k];
  }
  return total;
}

constexpr int kCpuRowLanes = 16;

// A compile-time 1 for the CPU's row loops (unit stride, one lane), passed where the GPU passes a run-time
// stride or lane count, so that those loops vectorise.
struct One {
  LMCL_HD constexpr operator int64_t() const { return 1; }
};

template <typename scalar_t, typename acc_t, typename Stride>
LMCL_HD inline acc_t row_squares(const scalar_t* x, Stride stride, int64_t D) {
  return lane_blocked_sum<kCpuRowLanes, acc_t>(D, [&](int64_t d) {
    const acc_t v = static_cast<acc_t>(x[d * stride]);
    return v * v;
  });
}

// This lane's elements of x / max(||x||, eps), written contiguous in acc_t, given the row's ||x||^2.
template <typename scalar_t, typename acc_t, typename Stride, typename Lanes>
LMCL_HD inline void normalize_finish(const scalar_t* x, Stride stride, int64_t D, acc_t eps, acc_t sq, int lane,
                                     Lanes lanes, acc_t* out) {
  const acc_t norm = norm_from_squares(x, int64_t(stride), D, sq);
  const acc_t inv = acc_t(1) / (norm > eps ? norm : eps);
  for (int64_t d = lane; d < D; d += lanes) {
    out[d] = static_cast<acc_t>(x[d * stride]) * inv;
  }
}

// The backward's row sums: ||x||^2 and x . g, with g = dL/dx_hat (plus an optional second contribution g2).
template <typename acc_t>
struct NormalizeBackwardSums {
  acc_t sq;
  acc_t dot;
};

template <typename scalar_t, typename acc_t>
LMCL_HD inline NormalizeBackwardSums<acc_t> normalize_backward_partial(const scalar_t* x, int64_t stride, int64_t D,
                                                                       const acc_t* g, const acc_t* g2, int lane,
                                                                       int lanes) {
  NormalizeBackwardSums<acc_t> s{acc_t(0), acc_t(0)};
  for (int64_t d = lane; d < D; d += lanes) {
    const acc_t v = static_cast<acc_t>(x[d * stride]);
    s.sq += v * v;
    s.dot += v * (g[d] + (g2 ? g2[d] : acc_t(0)));
  }
  return s;
}

// normalize_backward_partial's sums over the whole row, in the CPU's lane-blocked order.
template <typename scalar_t, typename acc_t, typename Stride>
LMCL_HD inline NormalizeBackwardSums<acc_t> normalize_backward_sums(const scalar_t* x, Stride stride, int64_t D,
                                                                    const acc_t* g, const acc_t* g2) {
  const auto v = [&](int64_t d) { return static_cast<acc_t>(x[d * stride]); };
  const acc_t sq = lane_blocked_sum<kCpuRowLanes, acc_t>(D, [&](int64_t d) { return v(d) * v(d); });
  const acc_t dot = g2 ? lane_blocked_sum<kCpuRowLanes, acc_t>(D, [&](int64_t d) { return v(d) * (g[d] + g2[d]); })
                       : lane_blocked_sum<kCpuRowLanes, acc_t>(D, [&](int64_t d) { return v(d) * g[d]; });
  return {sq, dot};
}

// This lane's elements of dx = (g - x_hat (x_hat . g)) / ||x|| when ||x|| > eps, else g / eps; times the
// upstream gradient. x_hat . g = (x . g) / ||x||, or, for a row whose squares overflowed, summed again from x_hat.
template <typename scalar_t, typename acc_t, typename Stride, typename Lanes>
LMCL_HD inline void normalize_backward_finish(const scalar_t* x, Stride stride, int64_t D, acc_t eps, const acc_t* g,
                                              const acc_t* g2, acc_t grad_out, NormalizeBackwardSums<acc_t> s,
                                              int lane, Lanes lanes, scalar_t* out) {
  const acc_t norm = norm_from_squares(x, int64_t(stride), D, s.sq);
  if (!(norm > eps)) {
    for (int64_t d = lane; d < D; d += lanes) {
      out[d] = static_cast<scalar_t>(grad_out * (g[d] + (g2 ? g2[d] : acc_t(0))) / eps);
    }
    return;
  }
  const acc_t inv = acc_t(1) / norm;
  acc_t dot_hat = s.dot * inv;
  if (!(s.sq - s.sq == acc_t(0))) {
    dot_hat = acc_t(0);
    for (int64_t d = 0; d < D; ++d) {
      dot_hat += static_cast<acc_t>(x[d * stride]) * inv * (g[d] + (g2 ? g2[d] : acc_t(0)));
    }
  }
  for (int64_t d = lane; d < D; d += lanes) {
    const acc_t gd = g[d] + (g2 ? g2[d] : acc_t(0));
    out[d] = static_cast<scalar_t>(grad_out * (gd - static_cast<acc_t>(x[d * stride]) * inv * dot_hat) * inv);
  }
}

}  // namespace lmc
}  // namespace lmcl
