// lmc_loss element-wise math, shared by the CPU kernel (csrc/cpu/lmc_loss_cpu.cpp) and the CUDA
// launcher (csrc/cuda/lmc_loss_cuda.cu). The similarity tiles themselves come from GEMMs on the host
// side (csrc/ops/lmc_loss_tiling.h); everything done to a tile element lives here, once:
//   - the role of a (query row, key row) pair, as an additive log-weight on its logit
//     (positive 0, intra-class log(intra_weight), inter-class 0; the cluster term drops same-image keys);
//   - the online log-sum-exp update of a query row over one key tile (running max and sum);
//   - the gradient coefficient of a pair, g = exp(logit + log_w - lse) * row_scale - pos_term;
//   - L2 normalisation of an embedding row and its backward.
// Rows are "queries": manifold rows r = i*N + k (student crop k of image i), or cluster rows i (the
// anchor crop s_i of image i). Key row c = j*N + k' is crop k' of key image j; the query's own image
// is key image key_offset + i.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/common.h"

// Vectorised reductions on the CPU (the build has -fopenmp); a no-op for nvcc and plain builds. The
// reduction order is fixed by the compiled code, so results stay bit-reproducible run to run.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define LMCL_PRAGMA(x) _Pragma(#x)
#define LMCL_SIMD_MAX(var) LMCL_PRAGMA(omp simd reduction(max : var))
#define LMCL_SIMD_SUM(var) LMCL_PRAGMA(omp simd reduction(+ : var))
#define LMCL_SIMD LMCL_PRAGMA(omp simd)
#else
#define LMCL_SIMD_MAX(var)
#define LMCL_SIMD_SUM(var)
#define LMCL_SIMD
#endif

namespace lmcl {
namespace lmc {

template <typename acc_t>
LMCL_HD inline acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

LMCL_HD inline float float_from_bits(int32_t bits) {
#ifdef __CUDA_ARCH__
  return __int_as_float(bits);
#else
  return __builtin_bit_cast(float, bits);  // a register move: unlike memcpy, it keeps loops vectorisable
#endif
}

LMCL_HD inline int32_t bits_of_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_int(f);
#else
  return __builtin_bit_cast(int32_t, f);
#endif
}

// cond ? a : b for floats through integer masks. Under -ftrapping-math (the default) GCC does not
// if-convert a floating-point ?: inside the loops below, and one such branch keeps a whole loop scalar.
LMCL_HD inline float select_float(bool cond, float a, float b) {
  const int32_t m = -static_cast<int32_t>(cond);
  return float_from_bits((bits_of_float(a) & m) | (bits_of_float(b) & ~m));
}

// exp(x) for float as a branch-free polynomial (Cephes expf: Cody-Waite reduction, degree-5
// polynomial, relative error ~1e-7), so the CPU tile loops vectorise; -inf and very negative
// arguments give exactly 0 (masked pairs contribute nothing). double uses the library exp.
LMCL_HD inline float exp_acc(float x) {
  const float lo = -87.0f;
  const float hi = 88.0f;
  const float xh = select_float(x > hi, hi, x);
  const float xc = select_float(xh < lo, lo, xh);
  // round(x * log2(e)) by the 1.5 * 2^23 trick (exact without -ffast-math for |n| < 2^22).
  const float magic = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + magic) - magic;
  const float r = (xc - n * 0.693359375f) - n * (-2.12194440e-4f);
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const float scale = float_from_bits((static_cast<int32_t>(n) + 127) << 23);
  return select_float(x >= lo, y * scale, 0.0f);
}

LMCL_HD inline double exp_acc(double x) {
  return ::exp(x);
}

LMCL_HD inline float log_acc(float x) {
  return ::logf(x);
}

LMCL_HD inline double log_acc(double x) {
  return ::log(x);
}

LMCL_HD inline float log1p_acc(float x) {
  return ::log1pf(x);
}

LMCL_HD inline double log1p_acc(double x) {
  return ::log1p(x);
}

LMCL_HD inline float sqrt_acc(float x) {
  return ::sqrtf(x);
}

LMCL_HD inline double sqrt_acc(double x) {
  return ::sqrt(x);
}

// log(1 + exp(x)) without overflow.
template <typename acc_t>
LMCL_HD inline acc_t softplus(acc_t x) {
  return x > acc_t(0) ? x + log1p_acc(exp_acc(-x)) : log1p_acc(exp_acc(x));
}

// 1 / (1 + exp(-x)) without overflow.
template <typename acc_t>
LMCL_HD inline acc_t sigmoid(acc_t x) {
  if (x >= acc_t(0)) {
    return acc_t(1) / (acc_t(1) + exp_acc(-x));
  }
  const acc_t e = exp_acc(x);
  return e / (acc_t(1) + e);
}

// Where a query row sits: its image among the keys (key_offset + local image) and its crop (k for a
// manifold row, the anchor crop s_i for a cluster row). anchor_idx == nullptr marks manifold rows.
struct RowPlace {
  int64_t same_lo;   // first key row of the query's own image
  int64_t self_col;  // key row of the same crop of the same image
};

LMCL_HD inline RowPlace row_place(int64_t row, int64_t N, int64_t key_offset, const int64_t* anchor_idx) {
  if (anchor_idx == nullptr) {
    const int64_t i = row / N;
    return RowPlace{(key_offset + i) * N, (key_offset + i) * N + row % N};
  }
  // Indices were validated by the op; clamping keeps a skipped check from reading out of bounds.
  const int64_t s = clamp_value<int64_t>(anchor_idx[row], 0, N - 1);
  return RowPlace{(key_offset + row) * N, (key_offset + row) * N + s};
}

// Additive log-weight of the pair (row, key col): 0 for keys of other images; for keys of the row's
// own image, self_log_w for the same crop and same_log_w for the others. Manifold: self 0 (the
// positive), same log(intra_weight) (-inf when intra_weight = 0). Cluster: both -inf (the own image's
// crops are not negatives of the anchor).
template <typename acc_t>
LMCL_HD inline acc_t pair_log_weight(int64_t col, const RowPlace& place, int64_t N, acc_t self_log_w,
                                     acc_t same_log_w) {
  if (col < place.same_lo || col >= place.same_lo + N) {
    return acc_t(0);
  }
  return col == place.self_col ? self_log_w : same_log_w;
}

// Gradient of the loss w.r.t. the similarity/tau of a pair: the softmax weight of the pair in its row
// times the row's scale, minus the pair's direct (positive) term.
template <typename acc_t>
LMCL_HD inline acc_t pair_grad(acc_t s, acc_t inv_tau, acc_t log_w, acc_t lse, acc_t row_scale, acc_t pos_term) {
  return exp_acc(s * inv_tau + log_w - lse) * row_scale - pos_term;
}

// Online log-sum-exp over one tile row: s[0..cols) are similarities with key rows col0.., the
// running (max, sum) of the row is updated in place; the raw logits of the row's own-image keys that
// fall in this tile are copied to same_logit[0..N) (positives and the cluster's p_k).
template <typename acc_t>
LMCL_HD inline void lse_tile_row(const acc_t* s, int64_t cols, int64_t col0, const RowPlace& place, int64_t N,
                                 acc_t inv_tau, acc_t self_log_w, acc_t same_log_w, acc_t& run_max,
                                 acc_t& run_sum, acc_t* same_logit) {
  // The own image's keys are a contiguous range: plain loops on both sides of it vectorise.
  const int64_t a = clamp_value<int64_t>(place.same_lo - col0, 0, cols);
  const int64_t b = clamp_value<int64_t>(place.same_lo + N - col0, 0, cols);
  acc_t tmax = neg_inf<acc_t>();
  LMCL_SIMD_MAX(tmax)
  for (int64_t j = 0; j < a; ++j) {
    const acc_t l = s[j] * inv_tau;
    tmax = l > tmax ? l : tmax;
  }
  for (int64_t j = a; j < b; ++j) {
    const acc_t l = s[j] * inv_tau + pair_log_weight(col0 + j, place, N, self_log_w, same_log_w);
    tmax = l > tmax ? l : tmax;
    same_logit[col0 + j - place.same_lo] = s[j] * inv_tau;
  }
  LMCL_SIMD_MAX(tmax)
  for (int64_t j = b; j < cols; ++j) {
    const acc_t l = s[j] * inv_tau;
    tmax = l > tmax ? l : tmax;
  }
  if (tmax == neg_inf<acc_t>()) {
    return;  // every pair of this tile is masked out
  }
  const acc_t m = run_max > tmax ? run_max : tmax;
  acc_t sum = acc_t(0);
  LMCL_SIMD_SUM(sum)
  for (int64_t j = 0; j < a; ++j) {
    sum += exp_acc(s[j] * inv_tau - m);
  }
  for (int64_t j = a; j < b; ++j) {
    sum += exp_acc(s[j] * inv_tau + pair_log_weight(col0 + j, place, N, self_log_w, same_log_w) - m);
  }
  LMCL_SIMD_SUM(sum)
  for (int64_t j = b; j < cols; ++j) {
    sum += exp_acc(s[j] * inv_tau - m);
  }
  run_sum = run_sum * exp_acc(run_max - m) + sum;
  run_max = m;
}

// Replace one tile row of similarities by the gradient coefficients of its pairs. pos_coef (cluster
// rows: N per-crop terms of the row) or, when null, pos_scale on the self column (manifold positive).
template <typename acc_t>
LMCL_HD inline acc_t pair_pos_term(int64_t col, const RowPlace& place, int64_t N, const acc_t* pos_coef,
                                   acc_t pos_scale) {
  if (col < place.same_lo || col >= place.same_lo + N) {
    return acc_t(0);
  }
  if (pos_coef != nullptr) {
    return pos_coef[col - place.same_lo];
  }
  return col == place.self_col ? pos_scale : acc_t(0);
}

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

// ---------------------------------------------------------------------------------------------------
// Launch bodies. Each has item(params, i) for one item and run(params, grid) = a grid-stride loop over
// the items: the CUDA launcher and the grid-runner test call run, the CPU kernel calls item inside
// at::parallel_for (and GradTileBody::row, the vectorisable row form of the same per-pair math).
// ---------------------------------------------------------------------------------------------------

#define LMCL_GRID_STRIDE_RUN(count)                                   \
  static LMCL_HD void run(const Params& p, GridIndex g) {             \
    const int64_t n = (count);                                        \
    for (int64_t i = g.first(); i < n; i += g.stride()) item(p, i);   \
  }

// Embeddings [B, N, D] (strided) -> normalised rows [B*N, D] contiguous. One item = one row.
template <typename scalar_t, typename acc_t>
struct NormalizeBody {
  struct Params {
    const scalar_t* x;
    int64_t rows, N, D;
    int64_t stride_b, stride_n, stride_d;
    acc_t eps;
    acc_t* out;
  };
  static LMCL_HD void item(const Params& p, int64_t r) {
    normalize_row(p.x + (r / p.N) * p.stride_b + (r % p.N) * p.stride_n, p.stride_d, p.D, p.eps, p.out + r * p.D);
  }
  LMCL_GRID_STRIDE_RUN(p.rows)
};

// A tile of similarities [rows, cols] (leading dimension ld) against key rows col0..col0+cols.
template <typename acc_t>
struct TileParams {
  acc_t* s;
  int64_t rows, cols, ld, col0;
  int64_t N, key_offset;
  const int64_t* anchor_idx;  // cluster rows when set
  acc_t inv_tau, self_log_w, same_log_w;
};

// Forward: online LSE of every row over this tile. One item = one row.
template <typename acc_t>
struct LseTileBody {
  struct Params {
    TileParams<acc_t> t;
    acc_t* run_max;     // [rows]
    acc_t* run_sum;     // [rows]
    acc_t* same_logit;  // [rows, N]
  };
  static LMCL_HD void item(const Params& p, int64_t r) {
    const RowPlace place = row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx);
    lse_tile_row(p.t.s + r * p.t.ld, p.t.cols, p.t.col0, place, p.t.N, p.t.inv_tau, p.t.self_log_w, p.t.same_log_w,
                 p.run_max[r], p.run_sum[r], p.same_logit + r * p.t.N);
  }
  LMCL_GRID_STRIDE_RUN(p.t.rows)
};

// Backward: similarity -> gradient coefficient, in place. One item = one tile element (coalesced
// on the GPU); row() is the same math a row at a time for the CPU.
template <typename acc_t>
struct GradTileBody {
  struct Params {
    TileParams<acc_t> t;
    const acc_t* lse;        // [rows]
    const acc_t* row_scale;  // [rows], or null: every row uses `scale`
    acc_t scale;
    const acc_t* pos_coef;   // [rows, N] (cluster), or null: `scale` on the positive (manifold)
  };
  static LMCL_HD void item(const Params& p, int64_t e) {
    const int64_t r = e / p.t.cols;
    const int64_t j = e % p.t.cols;
    const int64_t col = p.t.col0 + j;
    const RowPlace place = row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx);
    acc_t& s = p.t.s[r * p.t.ld + j];
    s = pair_grad(s, p.t.inv_tau, pair_log_weight(col, place, p.t.N, p.t.self_log_w, p.t.same_log_w), p.lse[r],
                  p.row_scale ? p.row_scale[r] : p.scale,
                  pair_pos_term(col, place, p.t.N, p.pos_coef ? p.pos_coef + r * p.t.N : nullptr, p.scale));
  }
  static LMCL_HD void row(const Params& p, int64_t r) {
    const RowPlace place = row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx);
    grad_tile_row(p.t.s + r * p.t.ld, p.t.cols, p.t.col0, place, p.t.N, p.t.inv_tau, p.t.self_log_w, p.t.same_log_w,
                  p.lse[r], p.row_scale ? p.row_scale[r] : p.scale, p.pos_coef ? p.pos_coef + r * p.t.N : nullptr,
                  p.scale);
  }
  LMCL_GRID_STRIDE_RUN(p.t.rows * p.t.cols)
};

// After the last tile: per-row LSE and row loss. One item = one row.
template <typename acc_t>
struct FinalizeBody {
  struct Params {
    int64_t rows, N;
    const int64_t* anchor_idx;  // cluster rows when set
    const acc_t* run_max;
    const acc_t* run_sum;
    const acc_t* same_logit;
    acc_t* lse;
    acc_t* row_loss;
  };
  static LMCL_HD void item(const Params& p, int64_t r) {
    const bool cluster = p.anchor_idx != nullptr;
    const int64_t crop = cluster ? clamp_value<int64_t>(p.anchor_idx[r], 0, p.N - 1) : r % p.N;
    p.row_loss[r] = finalize_row(p.run_max[r], p.run_sum[r], p.same_logit + r * p.N, crop, p.N, cluster, p.lse[r]);
  }
  LMCL_GRID_STRIDE_RUN(p.rows)
};

// Backward prologue of the cluster term. One item = one anchor row.
template <typename acc_t>
struct ClusterCoefBody {
  struct Params {
    int64_t rows, N;
    const int64_t* anchor_idx;
    const acc_t* same_logit;  // [rows, N] saved p_k
    const acc_t* lse;         // [rows] log NEG_i
    acc_t scale_over_tau;
    acc_t* pos_coef;          // [rows, N]
    acc_t* row_scale;         // [rows]
  };
  static LMCL_HD void item(const Params& p, int64_t r) {
    const int64_t crop = clamp_value<int64_t>(p.anchor_idx[r], 0, p.N - 1);
    p.row_scale[r] = cluster_row_coefficients(p.same_logit + r * p.N, p.lse[r], crop, p.N, p.scale_over_tau,
                                              p.pos_coef + r * p.N);
  }
  LMCL_GRID_STRIDE_RUN(p.rows)
};

// Gradient w.r.t. the raw embeddings [B, N, D] (written contiguous). The anchor rows (n == s_b) add
// the cluster term's gradient anchor_grad[b] when given. One item = one row.
template <typename scalar_t, typename acc_t>
struct NormalizeBackwardBody {
  struct Params {
    const scalar_t* x;
    int64_t rows, N, D;
    int64_t stride_b, stride_n, stride_d;
    acc_t eps;
    const acc_t* grad_hat;     // [rows, D]
    const acc_t* anchor_grad;  // [rows / N, D] or null
    const int64_t* anchor_idx;
    const acc_t* grad_out;     // scalar upstream gradient (read on the device: no host sync)
    scalar_t* out;             // [rows, D]
  };
  static LMCL_HD void item(const Params& p, int64_t r) {
    const int64_t b = r / p.N;
    const int64_t n = r % p.N;
    const bool anchor = p.anchor_grad != nullptr && n == clamp_value<int64_t>(p.anchor_idx[b], 0, p.N - 1);
    normalize_row_backward(p.x + b * p.stride_b + n * p.stride_n, p.stride_d, p.D, p.eps, p.grad_hat + r * p.D,
                           anchor ? p.anchor_grad + b * p.D : static_cast<const acc_t*>(nullptr), p.grad_out[0],
                           p.out + r * p.D);
  }
  LMCL_GRID_STRIDE_RUN(p.rows)
};

#undef LMCL_GRID_STRIDE_RUN

}  // namespace lmc
}  // namespace lmcl
