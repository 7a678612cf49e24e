// lmc_loss backward per pair: the gradient coefficient of a similarity, per tile row and per cluster row.
// g = exp(logit + log_w - lse) * row_scale - pos_term.
#pragma once

#include <cstdint>

#include "kernels/fast_math.h"
#include "kernels/lmc_loss_mask.h"

namespace lmcl {
namespace lmc {

// Gradient of the loss w.r.t. the similarity/tau of a pair: the softmax weight of the pair in its row
// times the row's scale, minus the pair's direct (positive) term.
template <typename acc_t>
LMCL_HD inline acc_t pair_grad(acc_t s, acc_t inv_tau, acc_t log_w, acc_t lse, acc_t row_scale, acc_t pos_term) {
  return exp_acc(s * inv_tau + log_w - lse) * row_scale - pos_term;
}

// Replace one tile row of similarities by the gradient coefficients of its pairs. pos_coef (cluster
// rows: N per-crop terms of the row) or, when null, pos_scale on the self column (manifold positive).
template <typename acc_t>
LMCL_HD inline void grad_tile_row(acc_t* s, int64_t cols, int64_t col0, const RowPlace& place, int64_t N,
                                  acc_t inv_tau, acc_t self_log_w, acc_t same_log_w, acc_t lse, acc_t row_scale,
                                  const acc_t* pos_coef, acc_t pos_scale) {
  const int64_t a = clamp_value<int64_t>(place.same_lo - col0, 0, cols);
  const int64_t b = clamp_value<int64_t>(place.same_lo + N - col0, 0, cols);
  LMCL_SIMD
  for (int64_t j = 0; j < a; ++j) {
    s[j] = pair_grad(s[j], inv_tau, acc_t(0), lse, row_scale, acc_t(0));
  }
  for (int64_t j = a; j < b; ++j) {
    const int64_t col = col0 + j;
    s[j] = pair_grad(s[j], inv_tau, pair_log_weight(col, place, N, self_log_w, same_log_w), lse, row_scale,
                     pair_pos_term(col, place, N, pos_coef, pos_scale));
  }
  LMCL_SIMD
  for (int64_t j = b; j < cols; ++j) {
    s[j] = pair_grad(s[j], inv_tau, acc_t(0), lse, row_scale, acc_t(0));
  }
}

// grad_tile_row over a whole row of pair weights w = exp(logit + log_w - max) (lse_row_weights):
// exp(logit + log_w - lse) * row_scale = w * row_scale / sum, so one multiply per pair instead of an exp.
template <typename acc_t>
LMCL_HD inline void grad_row_from_weights(acc_t* w, int64_t cols, const RowPlace& place, int64_t N, acc_t row_sum,
                                          acc_t row_scale, const acc_t* pos_coef, acc_t pos_scale) {
  const acc_t coef = row_sum > acc_t(0) ? row_scale / row_sum : acc_t(0);
  const int64_t a = clamp_value<int64_t>(place.same_lo, 0, cols);
  const int64_t b = clamp_value<int64_t>(place.same_lo + N, 0, cols);
  LMCL_SIMD
  for (int64_t j = 0; j < a; ++j) {
    w[j] *= coef;
  }
  for (int64_t j = a; j < b; ++j) {
    w[j] = w[j] * coef - pair_pos_term(j, place, N, pos_coef, pos_scale);
  }
  LMCL_SIMD
  for (int64_t j = b; j < cols; ++j) {
    w[j] *= coef;
  }
}

// Cluster backward, per anchor row: dL/dp_k = scale * (sigma_k - 1) with sigma_k = sigmoid(p_k - lse);
// pos_coef[k] = scale * (1 - sigma_k) / tau (0 for k = s_i) is subtracted on the positive pairs, and
// every inter pair gets exp(logit - lse) * sum_k pos_coef[k] (returned as the row scale).
template <typename acc_t>
LMCL_HD inline acc_t cluster_row_coefficients(const acc_t* same_logit, acc_t lse, int64_t self_crop, int64_t N,
                                              acc_t scale_over_tau, acc_t* pos_coef) {
  acc_t total = acc_t(0);
  for (int64_t k = 0; k < N; ++k) {
    const acc_t c = k == self_crop ? acc_t(0) : scale_over_tau * sigmoid(lse - same_logit[k]);
    pos_coef[k] = c;
    total += c;
  }
  return total;
}

}  // namespace lmc
}  // namespace lmcl
