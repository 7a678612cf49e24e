// lmc_loss launch bodies over the similarity tiles that the host side computes with GEMMs
// (csrc/host/lmc_loss.h): normalisation, the forward's online-LSE pass, the row losses, the cluster
// coefficients, the backward's per-pair gradient and the normalisation backward. Shared by the CPU
// kernel (item/row inside at::parallel_for), the CUDA kernel and the grid runner (run).
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "kernels/lmc_loss_grad.h"
#include "kernels/lmc_loss_lse.h"
#include "kernels/lmc_loss_mask.h"
#include "kernels/normalize.h"

namespace lmcl {
namespace lmc {

// Every body has item(params, i) for one item and run(params, grid) = a grid-stride loop over
// the items: the CUDA launcher and the grid-runner test call run, the CPU kernel calls item inside
// at::parallel_for (and GradTileBody::row, the vectorisable row form of the same per-pair math).

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
  int64_t rows, cols, ld, cs, col0;  // element (r, j) at s[r * ld + j * cs]
  int64_t N, key_offset;
  const int64_t* anchor_idx;  // cluster rows when set
  acc_t inv_tau, self_log_w, same_log_w;
};

// Forward: online LSE of every row over this tile. One item = one row (the GPU's tiles are
// column-major so that this is coalesced; see UnitCols / StridedCols).
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
    if (p.t.cs == 1) {
      lse_tile_row(p.t.s + r * p.t.ld, UnitCols{}, p.t.cols, p.t.col0, place, p.t.N, p.t.inv_tau, p.t.self_log_w,
                   p.t.same_log_w, p.run_max[r], p.run_sum[r], p.same_logit + r * p.t.N);
    } else {
      lse_tile_row(p.t.s + r * p.t.ld, StridedCols{p.t.cs}, p.t.cols, p.t.col0, place, p.t.N, p.t.inv_tau,
                   p.t.self_log_w, p.t.same_log_w, p.run_max[r], p.run_sum[r], p.same_logit + r * p.t.N);
    }
  }
  LMCL_GRID_STRIDE_RUN(p.t.rows)
};

// Backward: similarity -> gradient coefficient, in place. One item = one tile element (coalesced
// on the GPU for row-major tiles); row() is the same math a row at a time for the CPU (row-major
// tiles only: cs == 1).
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
    acc_t& s = p.t.s[r * p.t.ld + j * p.t.cs];
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
