// lmc_loss pair roles: a query row's place among the keys, each pair's log-weight and positive term.
// Roles: positive, intra-class, inter-class; cluster rows drop their own image.
// Rows are manifold rows r = i*N + k (student crop k of image i) or cluster rows i (the anchor crop s_i
// of image i). Key row c = j*N + k' is crop k' of key image j; the query's own image is key_offset + i.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace lmcl {
namespace lmc {

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
