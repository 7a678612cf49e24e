// lmc_loss launch bodies (one item = one row or tile element) over the math of the other lmc_loss_*.h.
// The similarity tiles come from GEMMs on the host side (csrc/host/lmc_loss.h). Bodies: normalisation, the
// forward's online-LSE pass, the row losses, the cluster coefficients, the backward's per-pair gradient and
// the normalisation backward. Shared by the CPU kernel (item/row inside at::parallel_for), the CUDA kernel
// and the grid runner (run).
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "kernels/lmc_loss_grad.h"
#include "kernels/lmc_loss_lse.h"
#include "kernels/lmc_loss_mask.h"
#include "kernels/normalize.h"
#include "kernels/row_groups.h"

namespace lmcl {
namespace lmc {

// Every body has item(params, i) for one item, which the CPU kernel calls inside at::parallel_for (and
// GradTileBody::row, the vectorisable row form of the same per-pair math). The GPU (and the grid runner)
// run the per-element bodies with run(params, grid) = a grid-stride loop over the items, and the bodies
// whose rows are long (normalisation over D, the forward's LSE over a tile's keys) as row groups
// (kernels/row_groups.h): one warp per row, each lane a strided share of the row, combined by shuffles.

#define LMCL_GRID_STRIDE_RUN(count)                                   \
  static LMCL_HD void run(const Params& p, GridIndex g) {             \
    const int64_t n = (count);                                        \
    for (int64_t i = g.first(); i < n; i += g.stride()) item(p, i);   \
  }

// A row-group State of one sum (combined by addition).
template <typename acc_t>
struct RowSum {
  acc_t sum;
};

// The CPU's item of a normalisation body: Body::row with the row's element stride, a compile-time One for
// unit-stride rows so that their loops vectorise.
template <class Body>
LMCL_HD inline void row_by_stride(const typename Body::Params& p, int64_t r) {
  if (p.stride_d == 1) {
    Body::row(p, r, One{});
  } else {
    Body::row(p, r, p.stride_d);
  }
}

// Embeddings [B, N, D] (strided) -> normalised rows [B*N, D] contiguous. A row group per row.
template <typename scalar_t, typename acc_t>
struct NormalizeBody {
  struct Params {
    const scalar_t* x;
    int64_t rows, N, D;
    int64_t stride_b, stride_n, stride_d;
    acc_t eps;
    acc_t* out;
  };
  using State = RowSum<acc_t>;
  static LMCL_HD const scalar_t* row_ptr(const Params& p, int64_t r) {
    return p.x + (r / p.N) * p.stride_b + (r % p.N) * p.stride_n;
  }
  static LMCL_HD int64_t rows(const Params& p) { return p.rows; }
  static LMCL_HD State partial(const Params& p, int64_t r, int lane, int lanes) {
    return State{normalize_partial<scalar_t, acc_t>(row_ptr(p, r), p.stride_d, p.D, lane, lanes)};
  }
  static LMCL_HD State combine(const State& a, const State& b) { return State{a.sum + b.sum}; }
  static LMCL_HD void finish(const Params& p, int64_t r, int lane, int lanes, const State& total) {
    normalize_finish(row_ptr(p, r), p.stride_d, p.D, p.eps, total.sum, lane, lanes, p.out + r * p.D);
  }
  // The CPU: one thread per row, its sum lane-blocked, unit-stride rows as such (both vectorise).
  template <typename Stride>
  static LMCL_HD void row(const Params& p, int64_t r, Stride stride) {
    const scalar_t* x = row_ptr(p, r);
    normalize_finish(x, stride, p.D, p.eps, row_squares<scalar_t, acc_t>(x, stride, p.D), 0, One{}, p.out + r * p.D);
  }
  static LMCL_HD void item(const Params& p, int64_t r) { row_by_stride<NormalizeBody>(p, r); }
};

// A tile of similarities [rows, cols] (leading dimension ld) against key rows col0..col0+cols. s holds the
// query rows from row0 on: 0 for a whole tile, a strip's first row on the CPU's row strips (host/lmc_loss.h),
// whose passes index rows and their per-row state globally.
template <typename acc_t>
struct TileParams {
  acc_t* s;
  int64_t rows, cols, ld, cs, col0;  // element (r, j) at s[(r - row0) * ld + j * cs]
  int64_t N, key_offset;
  const int64_t* anchor_idx;  // cluster rows when set
  acc_t inv_tau, self_log_w, same_log_w;
  int64_t row0;

  LMCL_HD acc_t* row(int64_t r) const { return s + (r - row0) * ld; }
};

// The tile loop's forward (GPU, grid runner): online LSE of every row over this tile, a row group per row:
// lane l takes the keys l, l + 32, ... of the row (neighbouring lanes read neighbouring similarities of a
// row-major tile), keeps its own running LSE (lse_add), and lane 0 merges the lanes' total into the row's
// running state (lse_union).
template <typename acc_t>
struct LseTileBody {
  struct Params {
    TileParams<acc_t> t;
    acc_t* run_max;     // [rows]
    acc_t* run_sum;     // [rows]
    acc_t* same_logit;  // [rows, N]
  };
  using State = LseState<acc_t>;
  static LMCL_HD int64_t rows(const Params& p) { return p.t.rows; }
  static LMCL_HD State partial(const Params& p, int64_t r, int lane, int lanes) {
    const RowPlace place = row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx);
    const acc_t* s = p.t.row(r);
    State st{neg_inf<acc_t>(), acc_t(0)};
    for (int64_t j = lane; j < p.t.cols; j += lanes) {
      const int64_t col = p.t.col0 + j;
      const acc_t logit = s[j * p.t.cs] * p.t.inv_tau;
      if (col >= place.same_lo && col < place.same_lo + p.t.N) {
        p.same_logit[r * p.t.N + col - place.same_lo] = logit;  // the row's own-image keys: each lane its own
      }
      lse_add(st, logit + pair_log_weight(col, place, p.t.N, p.t.self_log_w, p.t.same_log_w));
    }
    return st;
  }
  static LMCL_HD State combine(const State& a, const State& b) { return lse_union(a, b); }
  static LMCL_HD void finish(const Params& p, int64_t r, int lane, int /*lanes*/, const State& tile) {
    if (lane == 0) {
      const State run = lse_union(State{p.run_max[r], p.run_sum[r]}, tile);
      p.run_max[r] = run.max;
      p.run_sum[r] = run.sum;
    }
  }
};

// Backward: similarity -> gradient coefficient, in place. One item = one tile element (coalesced
// on the GPU for row-major tiles); row() is the same math a row at a time for the CPU (row-major
// tiles only: cs == 1).
template <typename acc_t>
struct GradTileBody {
  struct Params {
    TileParams<acc_t> t;
    const acc_t* normalizer;  // [rows]: the row's LSE; its sum of pair weights for GradWeightsRowBody
    const acc_t* row_scale;   // [rows], or null: every row uses `scale`
    acc_t scale;
    const acc_t* pos_coef;    // [rows, N] (cluster), or null: `scale` on the positive (manifold)
  };
  static LMCL_HD void item(const Params& p, int64_t e) {
    const int64_t r = e / p.t.cols;
    const int64_t j = e % p.t.cols;
    const int64_t col = p.t.col0 + j;
    const RowPlace place = row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx);
    acc_t& s = p.t.row(r)[j * p.t.cs];
    s = pair_grad(s, p.t.inv_tau, pair_log_weight(col, place, p.t.N, p.t.self_log_w, p.t.same_log_w),
                  p.normalizer[r], p.row_scale ? p.row_scale[r] : p.scale,
                  pair_pos_term(col, place, p.t.N, p.pos_coef ? p.pos_coef + r * p.t.N : nullptr, p.scale));
  }
  static LMCL_HD void row(const Params& p, int64_t r) {
    const RowPlace place = row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx);
    grad_tile_row(p.t.row(r), p.t.cols, p.t.col0, place, p.t.N, p.t.inv_tau, p.t.self_log_w, p.t.same_log_w,
                  p.normalizer[r], p.row_scale ? p.row_scale[r] : p.scale,
                  p.pos_coef ? p.pos_coef + r * p.t.N : nullptr, p.scale);
  }
  LMCL_GRID_STRIDE_RUN(p.t.rows * p.t.cols)
};

// The CPU's row strips (every key in the tile, col0 = 0): lse_row_weights sets a row's LSE state and leaves
// its pair weights in the tile; GradWeightsRowBody turns them into the gradient coefficients. One item = one
// row.
template <typename acc_t>
struct LseWeightsRowBody {
  using Params = typename LseTileBody<acc_t>::Params;
  static LMCL_HD void item(const Params& p, int64_t r) {
    lse_row_weights(p.t.row(r), p.t.cols, row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx), p.t.N, p.t.inv_tau,
                    p.t.self_log_w, p.t.same_log_w, p.run_max[r], p.run_sum[r], p.same_logit + r * p.t.N);
  }
};

template <typename acc_t>
struct GradWeightsRowBody {
  using Params = typename GradTileBody<acc_t>::Params;
  static LMCL_HD void item(const Params& p, int64_t r) {
    grad_row_from_weights(p.t.row(r), p.t.cols, row_place(r, p.t.N, p.t.key_offset, p.t.anchor_idx), p.t.N,
                          p.normalizer[r], p.row_scale ? p.row_scale[r] : p.scale,
                          p.pos_coef ? p.pos_coef + r * p.t.N : nullptr, p.scale);
  }
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
// the cluster term's gradient anchor_grad[b] when given. A row group per row.
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
  using State = NormalizeBackwardSums<acc_t>;
  static LMCL_HD const scalar_t* row_ptr(const Params& p, int64_t r) {
    return p.x + (r / p.N) * p.stride_b + (r % p.N) * p.stride_n;
  }
  // The cluster term's gradient when row r is its image's anchor crop, else null.
  static LMCL_HD const acc_t* anchor_row(const Params& p, int64_t r) {
    const int64_t b = r / p.N;
    const bool anchor = p.anchor_grad != nullptr && r % p.N == clamp_value<int64_t>(p.anchor_idx[b], 0, p.N - 1);
    return anchor ? p.anchor_grad + b * p.D : nullptr;
  }
  static LMCL_HD int64_t rows(const Params& p) { return p.rows; }
  static LMCL_HD State partial(const Params& p, int64_t r, int lane, int lanes) {
    return normalize_backward_partial(row_ptr(p, r), p.stride_d, p.D, p.grad_hat + r * p.D, anchor_row(p, r), lane,
                                      lanes);
  }
  static LMCL_HD State combine(const State& a, const State& b) { return State{a.sq + b.sq, a.dot + b.dot}; }
  static LMCL_HD void finish(const Params& p, int64_t r, int lane, int lanes, const State& total) {
    normalize_backward_finish(row_ptr(p, r), p.stride_d, p.D, p.eps, p.grad_hat + r * p.D, anchor_row(p, r),
                              p.grad_out[0], total, lane, lanes, p.out + r * p.D);
  }
  template <typename Stride>
  static LMCL_HD void row(const Params& p, int64_t r, Stride stride) {
    const scalar_t* x = row_ptr(p, r);
    const acc_t* g = p.grad_hat + r * p.D;
    const acc_t* g2 = anchor_row(p, r);
    normalize_backward_finish(x, stride, p.D, p.eps, g, g2, p.grad_out[0],
                              normalize_backward_sums(x, stride, p.D, g, g2), 0, One{}, p.out + r * p.D);
  }
  static LMCL_HD void item(const Params& p, int64_t r) { row_by_stride<NormalizeBackwardBody>(p, r); }
};

#undef LMCL_GRID_STRIDE_RUN

}  // namespace lmc
}  // namespace lmcl
