// crop_saliency math, shared by the CPU kernel, the CUDA kernels and the grid-runner tests.
// The summed-area table `sat` of one image is (H+1) x (W+1), row-major, with a zero first row and
// column: sat[i][j] = sum of saliency[0:i, 0:j]. A box (top, left, height, width) is four look-ups.
// The backward is the mean's adjoint: each box spreads g / (h * w) uniformly over its pixels, written
// as four corner updates of a 2-D difference array whose 2-D prefix sum is the gradient.
#pragma once

#include "kernels/common.h"

namespace lmcl {

// A box clipped to the image: rows [t0, t1), columns [l0, l1), with t0 <= t1 and l0 <= l1. The ops
// reject boxes outside the image before (CPU) or after (CUDA, one flag read) the kernels run, so the
// clamp only guarantees that a kernel never reads or writes out of bounds.
struct ClampedBox {
  int64_t t0, l0, t1, l1;
  LMCL_HD int64_t area() const { return (t1 - t0) * (l1 - l0); }
};

LMCL_HD inline bool box_is_valid(int64_t t, int64_t l, int64_t h, int64_t w, int64_t H, int64_t W) {
  return t >= 0 && l >= 0 && h >= 1 && w >= 1 && h <= H - t && w <= W - l;
}

LMCL_HD inline ClampedBox clamp_box(int64_t t, int64_t l, int64_t h, int64_t w, int64_t H, int64_t W) {
  ClampedBox c;
  c.t0 = clamp_value<int64_t>(t, 0, H);
  c.l0 = clamp_value<int64_t>(l, 0, W);
  // h, w are clamped before the add so huge values cannot overflow.
  c.t1 = c.t0 + clamp_value<int64_t>(h, 0, H - c.t0);
  c.l1 = c.l0 + clamp_value<int64_t>(w, 0, W - c.l0);
  return c;
}

// One row of the table: row[0] = 0, row[j + 1] = prev[j + 1] + sum(src[0..j]). src is read through
// its stride, so a non-contiguous saliency map needs no copy.
template <typename scalar_t, typename acc_t>
LMCL_HD inline void sat_row_scan(const scalar_t* src, int64_t stride_w, const acc_t* prev, acc_t* row, int64_t W) {
  acc_t run = acc_t(0);
  row[0] = acc_t(0);
  for (int64_t j = 0; j < W; ++j) {
    run += static_cast<acc_t>(src[j * stride_w]);
    row[j + 1] = prev[j + 1] + run;
  }
}

template <typename acc_t>
LMCL_HD inline acc_t box_sum(const acc_t* sat, int64_t W1, const ClampedBox& c) {
  return sat[c.t1 * W1 + c.l1] - sat[c.t0 * W1 + c.l1] - sat[c.t1 * W1 + c.l0] + sat[c.t0 * W1 + c.l0];
}

// Mean of the box from the (H+1) x (W+1) table of its image; an empty (clamped-away) box gives 0.
template <typename acc_t>
LMCL_HD inline acc_t box_mean(const acc_t* sat, int64_t H, int64_t W, int64_t t, int64_t l, int64_t h, int64_t w) {
  const ClampedBox c = clamp_box(t, l, h, w, H, W);
  const int64_t area = c.area();
  return area > 0 ? box_sum(sat, W + 1, c) / static_cast<acc_t>(area) : acc_t(0);
}

// The four difference-array updates (flat offsets into one image's (H+1) x (W+1) array) that spread
// g / area over the box.
template <typename acc_t>
LMCL_HD inline void box_adjoint_corners(int64_t H, int64_t W, int64_t t, int64_t l, int64_t h, int64_t w, acc_t g,
                                        int64_t* offset, acc_t* value) {
  const ClampedBox c = clamp_box(t, l, h, w, H, W);
  const int64_t area = c.area();
  const acc_t v = area > 0 ? g / static_cast<acc_t>(area) : acc_t(0);
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

// One row of the 2-D prefix sum of the difference array: carry[j] holds the column sums of the
// row-prefix sums of the rows above; out_row[j] = carry[j] after adding this row's prefix.
template <typename acc_t, typename out_t>
LMCL_HD inline void adjoint_row_scan(const acc_t* diff_row, acc_t* carry, out_t* out_row, int64_t W) {
  acc_t run = acc_t(0);
  for (int64_t j = 0; j < W; ++j) {
    run += diff_row[j];
    carry[j] += run;
    out_row[j] = static_cast<out_t>(carry[j]);
  }
}

// Box look-up launch: one box per item of a grid-stride loop over B * N. Writes the float32 mean and
// an invalid-box flag (the CUDA op reads the flags once to raise the ValueError the CPU op raises up front).
template <typename index_t>
struct CropSaliencyLookupBody {
  struct Params {
    const double* sat;     // [B, H + 1, W + 1], contiguous
    const index_t* boxes;  // [B, N, 4], read through strides
    int64_t box_stride_b, box_stride_n, box_stride_c;
    float* out;            // [B, N], contiguous
    uint8_t* invalid;      // [B, N], contiguous
    int64_t B, N, H, W;
  };

  static LMCL_HD void run(const Params& p, GridIndex g) {
    const int64_t total = p.B * p.N;
    const int64_t table = (p.H + 1) * (p.W + 1);
    for (int64_t i = g.first(); i < total; i += g.stride()) {
      const int64_t b = i / p.N;
      const index_t* box = p.boxes + b * p.box_stride_b + (i - b * p.N) * p.box_stride_n;
      const int64_t t = box[0], l = box[p.box_stride_c], h = box[2 * p.box_stride_c], w = box[3 * p.box_stride_c];
      p.out[i] = static_cast<float>(box_mean(p.sat + b * table, p.H, p.W, t, l, h, w));
      p.invalid[i] = box_is_valid(t, l, h, w, p.H, p.W) ? 0 : 1;
    }
  }
};

// Backward corner launch: one box per item; writes the four flat offsets (into the whole
// [B, H + 1, W + 1] difference array) and values that the launcher accumulates with index_put_.
template <typename index_t>
struct CropSaliencyCornersBody {
  struct Params {
    const float* grad;  // [B, N], read through strides
    int64_t grad_stride_b, grad_stride_n;
    const index_t* boxes;
    int64_t box_stride_b, box_stride_n, box_stride_c;
    int64_t* offset;  // [B * N * 4]
    double* value;    // [B * N * 4]
    int64_t B, N, H, W;
  };

  static LMCL_HD void run(const Params& p, GridIndex g) {
    const int64_t total = p.B * p.N;
    const int64_t table = (p.H + 1) * (p.W + 1);
    for (int64_t i = g.first(); i < total; i += g.stride()) {
      const int64_t b = i / p.N;
      const int64_t n = i - b * p.N;
      const index_t* box = p.boxes + b * p.box_stride_b + n * p.box_stride_n;
      const double gv = static_cast<double>(p.grad[b * p.grad_stride_b + n * p.grad_stride_n]);
      box_adjoint_corners<double>(p.H, p.W, box[0], box[p.box_stride_c], box[2 * p.box_stride_c],
                                  box[3 * p.box_stride_c], gv, p.offset + 4 * i, p.value + 4 * i);
      for (int k = 0; k < 4; ++k) {
        p.offset[4 * i + k] += b * table;
      }
    }
  }
};

}  // namespace lmcl
