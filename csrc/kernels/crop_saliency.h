// crop_saliency host/device math: summed-area look-ups, NaN/Inf per box, the CPU row sweep, the adjoint, launch bodies.
// Shared by the CPU kernel, the CUDA kernels and the grid-runner tests. Box clamp (box_span):
// kernels/boxes.h. The summed-area table of one image is (H+1) x (W+1) with a zero first row and column:
// sat[i][j] = sum of saliency[0:i, 0:j]. A box (top, left, height, width) is four look-ups, on table rows t0
// = top and t1 = top + height: sum = span(row t1) - span(row t0), span(row) = row[l1] - row[l0]. The CUDA
// kernel stores the whole table; the CPU kernel sweeps the image once, keeping running column sums and
// building a table row only where a box reads it (a stored table would cost 8 bytes written per pixel against
// 4 read). Both take the same look-ups in the same order. NaN/Inf pixels would spread through a table to every
// box below and right of them, so the tables hold the finite pixels only and each box's NaN, +Inf and -Inf
// pixels are counted apart (box_mean_with_nonfinite). The backward is the mean's adjoint: each box
// spreads g / area uniformly over its pixels, i.e. four corner updates of a 2-D difference array whose 2-D
// prefix sum is the gradient.
#pragma once

#include <limits>

#include "kernels/boxes.h"
#include "kernels/common.h"

namespace lmcl {

// ---- table rows ------------------------------------------------------------------------------------

// Add one map row (read through its stride) into the running column sums.
template <typename scalar_t, typename acc_t>
LMCL_HD inline void sat_add_row(const scalar_t* src, int64_t stride_w, acc_t* colsum, int64_t W) {
  if (stride_w == 1) {
    // The common contiguous row: a unit-stride loop the compiler vectorises.
    for (int64_t j = 0; j < W; ++j) {
      colsum[j] += static_cast<acc_t>(src[j]);
    }
    return;
  }
  for (int64_t j = 0; j < W; ++j) {
    colsum[j] += static_cast<acc_t>(src[j * stride_w]);
  }
}

// After map rows [0, r) were added into colsum, table row r is its prefix sum (W + 1 entries).
template <typename acc_t>
LMCL_HD inline void sat_row_from_columns(const acc_t* colsum, acc_t* row, int64_t W) {
  acc_t run = acc_t(0);
  row[0] = acc_t(0);
  for (int64_t j = 0; j < W; ++j) {
    run += colsum[j];
    row[j + 1] = run;
  }
}

// ---- look-ups --------------------------------------------------------------------------------------

template <typename acc_t>
LMCL_HD inline acc_t box_row_span(const acc_t* row, const BoxSpan& c) {
  return row[c.l1] - row[c.l0];
}

template <typename acc_t>
LMCL_HD inline acc_t box_mean_from_sum(acc_t sum, const BoxSpan& c) {
  const int64_t area = c.area();
  return area > 0 ? sum / static_cast<acc_t>(area) : acc_t(0);
}

// Mean of a box from its image's stored (H+1) x (W+1) table; an empty (clamped-away) box gives 0.
template <typename acc_t>
LMCL_HD inline acc_t box_mean(const acc_t* sat, int64_t W, const BoxSpan& c) {
  const int64_t W1 = W + 1;
  return box_mean_from_sum(box_row_span(sat + c.t1 * W1, c) - box_row_span(sat + c.t0 * W1, c), c);
}

// ---- NaN and Inf pixels ------------------------------------------------------------------------------

// The CUDA kernel's integer summed-area table of the non-finite pixels, (H+1) x (W+1) x 3 per image: entry
// (i, j, kind) counts the pixels of that kind in rows [0, i) x columns [0, j), the three kinds of a corner
// side by side (one box reads 4 corners x 3 counts).
enum NonFiniteKind : int { kNaNPixels = 0, kPosInfPixels = 1, kNegInfPixels = 2, kNonFiniteKinds = 3 };

template <typename count_t>
LMCL_HD inline count_t box_count(const count_t* counts, int64_t W, const BoxSpan& c, NonFiniteKind kind) {
  const auto corner = [&](int64_t row, int64_t col) { return counts[(row * (W + 1) + col) * kNonFiniteKinds + kind]; };
  return (corner(c.t1, c.l1) - corner(c.t1, c.l0)) - (corner(c.t0, c.l1) - corner(c.t0, c.l0));
}

// The mean of a box that holds `nan` NaN, `pinf` +Inf and `ninf` -Inf pixels besides finite ones of mean
// finite_mean, as summing the box in IEEE arithmetic gives it: NaN with a NaN or with both infinities, else
// the infinity it holds, else the finite mean. Any count type works (> 0 exactly when the box holds one).
template <typename acc_t, typename count_t>
LMCL_HD inline acc_t box_mean_with_nonfinite(acc_t finite_mean, count_t nan, count_t pinf, count_t ninf) {
  if (nan > 0 || (pinf > 0 && ninf > 0)) {
    return std::numeric_limits<acc_t>::quiet_NaN();
  }
  if (pinf > 0) {
    return std::numeric_limits<acc_t>::infinity();
  }
  return ninf > 0 ? -std::numeric_limits<acc_t>::infinity() : finite_mean;
}

// ---- the CPU row sweep -----------------------------------------------------------------------------

// Each box has two events, on rows t0 (top) and t1 (bottom). Keys sort by row; within a row the order
// is irrelevant (each event touches its own box).
LMCL_HD inline int64_t box_event_key(int64_t row, int64_t n, bool bottom, int64_t N) {
  return row * 2 * N + 2 * n + (bottom ? 1 : 0);
}
LMCL_HD inline int64_t box_event_row(int64_t key, int64_t N) { return key / (2 * N); }
LMCL_HD inline int64_t box_event_box(int64_t key, int64_t N) { return (key % (2 * N)) / 2; }
LMCL_HD inline bool box_event_bottom(int64_t key) { return key % 2 == 1; }

// Forward event: the top row's span is subtracted, the bottom row's added. The top event comes first
// (t0 < t1 for a non-empty box), so acc = -span(t0) + span(t1): bit-equal to box_mean's difference.
template <typename acc_t>
LMCL_HD inline void box_sum_event(acc_t& acc, const acc_t* row, const BoxSpan& c, bool bottom) {
  const acc_t span = box_row_span(row, c);
  acc += bottom ? span : -span;
}

// ---- backward ----------------------------------------------------------------------------------------

template <typename acc_t>
LMCL_HD inline acc_t box_adjoint_value(acc_t g, const BoxSpan& c) {
  const int64_t area = c.area();
  return area > 0 ? g / static_cast<acc_t>(area) : acc_t(0);
}

// CPU sweep: carry (W + 1 entries) holds the column sums of the difference array over the rows seen
// so far. A box adds +v at (t0, l0), -v at (t0, l1), -v at (t1, l0), +v at (t1, l1).
template <typename acc_t>
LMCL_HD inline void box_adjoint_event(acc_t* carry, const BoxSpan& c, acc_t v, bool bottom) {
  const acc_t s = bottom ? -v : v;
  carry[c.l0] += s;
  carry[c.l1] -= s;
}

// Gradient row = prefix sum of carry over the W columns (column W only ever cancels out).
template <typename acc_t, typename out_t>
LMCL_HD inline void adjoint_row_from_carry(const acc_t* carry, out_t* out_row, int64_t W) {
  acc_t run = acc_t(0);
  for (int64_t j = 0; j < W; ++j) {
    run += carry[j];
    out_row[j] = static_cast<out_t>(run);
  }
}

// CUDA: the four difference-array updates of a box as flat offsets into its image's (H+1) x (W+1)
// array, accumulated by the launcher with index_put_.
template <typename acc_t>
LMCL_HD inline void box_adjoint_corners(int64_t W, const BoxSpan& c, acc_t v, int64_t* offset, acc_t* value) {
  const int64_t W1 = W + 1;
  offset[0] = c.t0 * W1 + c.l0;
  value[0] = v;
  offset[1] = c.t0 * W1 + c.l1;
  value[1] = -v;
  offset[2] = c.t1 * W1 + c.l0;
  value[2] = -v;
  offset[3] = c.t1 * W1 + c.l1;
  value[3] = v;
}

// ---- CUDA kernel bodies ------------------------------------------------------------------------------

// Box look-up launch: one box per item of a grid-stride loop over B * N. Writes the float32 mean (the finite
// pixels' table, then the box's NaN/Inf counts) and checks the box: a device-side assert (the CUDA op), or,
// where `invalid` is set, an invalid-box flag instead (the grid-runner tests of the clamp).
template <typename index_t, typename count_t>
struct CropSaliencyLookupBody {
  struct Params {
    const double* sat;       // [B, H + 1, W + 1], contiguous: the finite pixels (NaN/Inf read as 0)
    const count_t* counts;   // [B, H + 1, W + 1, 3], contiguous: the NaN, +Inf, -Inf pixels
    BoxTable<index_t> boxes;
    int64_t H, W;
    float* out;         // [B, N], contiguous
    uint8_t* invalid;   // [B, N], contiguous, or nullptr: check
  };

  static LMCL_HD void run(const Params& p, GridIndex g) {
    const int64_t table = (p.H + 1) * (p.W + 1);
    for_each_box(p.boxes, g, [&](int64_t i, int64_t b, int64_t n) {
      const Box box = p.boxes(b, n);
      if (p.invalid == nullptr) {
        check_box("crop_saliency", box, b, n, p.H, p.W);
      } else {
        p.invalid[i] = box_is_valid(box, p.H, p.W) ? 0 : 1;
      }
      const BoxSpan c = box_span(box, p.H, p.W);
      const count_t* counts = p.counts + b * table * kNonFiniteKinds;
      p.out[i] = static_cast<float>(box_mean_with_nonfinite(
          box_mean(p.sat + b * table, p.W, c), box_count(counts, p.W, c, kNaNPixels),
          box_count(counts, p.W, c, kPosInfPixels), box_count(counts, p.W, c, kNegInfPixels)));
    });
  }
};

// Backward corner launch: one box per item; writes the four flat offsets (into the whole
// [B, H + 1, W + 1] difference array) and values that the launcher accumulates with index_put_.
template <typename index_t>
struct CropSaliencyCornersBody {
  struct Params {
    const float* grad;  // [B, N], read through strides
    int64_t grad_stride_b, grad_stride_n;
    BoxTable<index_t> boxes;
    int64_t H, W;
    int64_t* offset;    // [B * N * 4]
    double* value;      // [B * N * 4]
  };

  static LMCL_HD void run(const Params& p, GridIndex g) {
    const int64_t table = (p.H + 1) * (p.W + 1);
    for_each_box(p.boxes, g, [&](int64_t i, int64_t b, int64_t n) {
      const BoxSpan c = box_span(p.boxes(b, n), p.H, p.W);
      const double gv = static_cast<double>(p.grad[b * p.grad_stride_b + n * p.grad_stride_n]);
      box_adjoint_corners<double>(p.W, c, box_adjoint_value(gv, c), p.offset + 4 * i, p.value + 4 * i);
      for (int k = 0; k < 4; ++k) {
        p.offset[4 * i + k] += b * table;
      }
    });
  }
};

}  // namespace lmcl
