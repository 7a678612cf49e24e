// lmc_loss log-sum-exp: of a whole row (the CPU's strips), the GPU's running tile state, and the row losses.
#pragma once

#include <cstdint>

#include "kernels/fast_math.h"
#include "kernels/lmc_loss_mask.h"

namespace lmcl {
namespace lmc {

// The log-sum-exp state of a whole row at once (the CPU's row strips hold every key), leaving the pair
// weights exp(logit + log_w - max) in place of the similarities (0 for masked pairs), so that the gradient
// pass scales them instead of computing each exp again (grad_row_from_weights). The raw logits of the row's
// own-image keys go to same_logit[0..N) (positives and the cluster's p_k).
template <typename acc_t>
LMCL_HD inline void lse_row_weights(acc_t* s, int64_t cols, const RowPlace& place, int64_t N, acc_t inv_tau,
                                    acc_t self_log_w, acc_t same_log_w, acc_t& row_max, acc_t& row_sum,
                                    acc_t* same_logit) {
  const int64_t a = clamp_value<int64_t>(place.same_lo, 0, cols);
  const int64_t b = clamp_value<int64_t>(place.same_lo + N, 0, cols);
  acc_t m = neg_inf<acc_t>();
  LMCL_SIMD_MAX(m)
  for (int64_t j = 0; j < a; ++j) {
    const acc_t l = s[j] * inv_tau;
    m = l > m ? l : m;
  }
  for (int64_t j = a; j < b; ++j) {
    const acc_t l = s[j] * inv_tau + pair_log_weight(j, place, N, self_log_w, same_log_w);
    m = l > m ? l : m;
    same_logit[j - place.same_lo] = s[j] * inv_tau;
  }
  LMCL_SIMD_MAX(m)
  for (int64_t j = b; j < cols; ++j) {
    const acc_t l = s[j] * inv_tau;
    m = l > m ? l : m;
  }
  const acc_t shift = m == neg_inf<acc_t>() ? acc_t(0) : m;  // every pair masked: all weights 0
  acc_t sum = acc_t(0);
  LMCL_SIMD_SUM(sum)
  for (int64_t j = 0; j < a; ++j) {
    s[j] = exp_acc(s[j] * inv_tau - shift);
    sum += s[j];
  }
  for (int64_t j = a; j < b; ++j) {
    s[j] = exp_acc(s[j] * inv_tau + pair_log_weight(j, place, N, self_log_w, same_log_w) - shift);
    sum += s[j];
  }
  LMCL_SIMD_SUM(sum)
  for (int64_t j = b; j < cols; ++j) {
    s[j] = exp_acc(s[j] * inv_tau - shift);
    sum += s[j];
  }
  row_max = m;
  row_sum = sum;
}

// A running log-sum-exp: sum of exp(x - max) over a set of logits, and their max (-inf: an empty set). The
// GPU's forward pass keeps one per lane (lse_add), then merges the lanes' and the row's (lse_union).
template <typename acc_t>
struct LseState {
  acc_t max;
  acc_t sum;
};

// Add one logit; -inf (a masked pair) adds nothing. The first logit finds max = -inf: sum = 0 * 0 + 1.
template <typename acc_t>
LMCL_HD inline void lse_add(LseState<acc_t>& st, acc_t x) {
  if (x > st.max) {
    st.sum = st.sum * exp_acc(st.max - x) + acc_t(1);
    st.max = x;
  } else if (x != neg_inf<acc_t>()) {
    st.sum += exp_acc(x - st.max);
  }
}

// The state of the union of two sets.
template <typename acc_t>
LMCL_HD inline LseState<acc_t> lse_union(const LseState<acc_t>& a, const LseState<acc_t>& b) {
  if (b.max == neg_inf<acc_t>()) {
    return a;
  }
  if (a.max == neg_inf<acc_t>()) {
    return b;
  }
  const acc_t m = a.max > b.max ? a.max : b.max;
  return LseState<acc_t>{m, a.sum * exp_acc(a.max - m) + b.sum * exp_acc(b.max - m)};
}

// Row losses once every key tile has been seen. Manifold row: lse - positive logit. Cluster row i
// (lse = log NEG_i): sum over k != s_i of -log(e^{p_k} / (e^{p_k} + NEG_i)) = softplus(log NEG_i - p_k).
template <typename acc_t>
LMCL_HD inline acc_t finalize_row(acc_t run_max, acc_t run_sum, const acc_t* same_logit, int64_t self_crop,
                                  int64_t N, bool cluster, acc_t& lse) {
  lse = run_max + log_acc(run_sum);
  if (!cluster) {
    return lse - same_logit[self_crop];
  }
  acc_t loss = acc_t(0);
  for (int64_t k = 0; k < N; ++k) {
    if (k != self_crop) {
      loss += softplus(lse - same_logit[k]);
    }
  }
  return loss;
}

}  // namespace lmc
}  // namespace lmcl
