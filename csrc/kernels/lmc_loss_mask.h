// lmc_loss pair roles: a query row's place among the keys, each pair's log-weight and positive term.
// Roles: positive, intra-class, inter-class; cluster rows drop their own image.
// Rows are manifold rows r = i*N + k (student crop k of image i) or cluster rows i (the anchor crop s_i
// of image i). Key row c = j*N + k' is crop k' of key image j; the query's own image is key_offset + i.
#pragma once

#include <cstdint>

#include "kernels/check.h"
#include "kernels/common.h"

namespace lmcl {
namespace lmc {

// The anchor rule on the device (the CUDA op; the CPU op checks on the host with the range of values):
// one item per image, a device-side assert on anchor_idx[i] outside [0, N). The words of the CPU's
// ValueError up to "got".
struct AnchorCheckBody {
  struct Params {
    const int64_t* anchor_idx;  // [B], contiguous
    int64_t B, N;
  };
  static LMCL_HD void item(const Params& p, int64_t i) {
    const int64_t s = p.anchor_idx[i];
    LMCL_KERNEL_CHECK(s >= 0 && s < p.N,
                      "lmc_loss: anchor_idx must be in [0, N) = [0, %lld), got anchor_idx[%lld] = %lld",
                      static_cast<long long>(p.N), static_cast<long long>(i), static_cast<long long>(s));
  }
  static LMCL_HD void run(const Params& p, GridIndex g) {
    for (int64_t i = g.first(); i < p.B; i += g.stride()) {
      item(p, i);
    }
  }
};

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
  // Indices were validated by the op (AnchorCheckBody on the GPU); clamping keeps reads in bounds.
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

// The direct (positive) term of a pair, subtracted from its gradient coefficient: pos_coef[k] for the
// own image's crops of a cluster row or, when pos_coef is null, pos_scale on the self column (the
// manifold positive); 0 for every other pair.
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

}  // namespace lmc
}  // namespace lmcl
