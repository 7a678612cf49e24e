// The box rule as host/device math: box reads, the validity predicate, its one error text, the two clamps,
// the device check. SPEC §1.1. The clamps keep a box that skipped the check from reading out of bounds.
#pragma once

#include <cstdint>

#include "kernels/check.h"
#include "kernels/common.h"

namespace lmcl {

// One box as stored: (top, left, height, width), unchecked.
struct Box {
  int64_t top, left, height, width;
};

// A box of four values `stride` apart (int32 or int64).
template <typename index_t>
LMCL_HD inline Box read_box(const index_t* box, int64_t stride) {
  return Box{static_cast<int64_t>(box[0]), static_cast<int64_t>(box[stride]), static_cast<int64_t>(box[2 * stride]),
             static_cast<int64_t>(box[3 * stride])};
}

// Inside the H x W image with height, width >= 1. Written with subtraction so that huge values cannot
// overflow into "valid".
LMCL_HD inline bool box_is_valid(const Box& b, int64_t H, int64_t W) {
  return b.top >= 0 && b.left >= 0 && b.height >= 1 && b.width >= 1 && b.height <= H - b.top &&
         b.width <= W - b.left;
}

// The error text of box (b, n) outside the H x W image or with height/width < 1, as a printf format: the
// CPU's ValueError (csrc/host/boxes.h) and the GPU's device-side assert (check_box) print the same words.
// Arguments: op, H, W, b, n, top, left, height, width, H, W (long long).
#define LMCL_INVALID_BOX_FORMAT                                                                              \
  "%s: boxes must lie inside the %lldx%lld image with height, width >= 1 (top >= 0, left >= 0, top + height " \
  "<= H, left + width <= W), got boxes[%lld, %lld] = (top, left, height, width) = (%lld, %lld, %lld, %lld) "  \
  "for an image of H x W = %lld x %lld"

// The name of the op in a device-side message: a fixed-size copy inside the kernel's parameters (a host
// pointer cannot be read on the device). Filled by op_name() (csrc/host/boxes.h).
struct OpName {
  char text[32];
};

// The box rule on the device: a device-side assert (on the host, the ValueError) naming box (b, n).
LMCL_HD inline void check_box(const char* op, const Box& box, int64_t b, int64_t n, int64_t H, int64_t W) {
  using ll = long long;
  LMCL_KERNEL_CHECK(box_is_valid(box, H, W), LMCL_INVALID_BOX_FORMAT, op, ll(H), ll(W), ll(b), ll(n), ll(box.top),
                    ll(box.left), ll(box.height), ll(box.width), ll(H), ll(W));
}

// The rows [t0, t1) and columns [l0, l1) of a box inside the image, possibly empty (area 0): the clamp
// of the summed-area look-ups (crop_saliency), where an empty box reads nothing.
struct BoxSpan {
  int64_t t0, l0, t1, l1;
  LMCL_HD int64_t area() const { return (t1 - t0) * (l1 - l0); }
};

LMCL_HD inline BoxSpan box_span(const Box& b, int64_t H, int64_t W) {
  BoxSpan c;
  c.t0 = clamp_value<int64_t>(b.top, 0, H);
  c.l0 = clamp_value<int64_t>(b.left, 0, W);
  // height, width are clamped before the add so huge values cannot overflow.
  c.t1 = c.t0 + clamp_value<int64_t>(b.height, 0, H - c.t0);
  c.l1 = c.l0 + clamp_value<int64_t>(b.width, 0, W - c.l0);
  return c;
}

// A box clamped to at least one pixel inside the image (H, W >= 1): the clamp of the bilinear resample
// (multi_crop), which needs a source pixel to read. Valid boxes pass unchanged.
LMCL_HD inline Box nonempty_box(const Box& b, int64_t H, int64_t W) {
  const int64_t top = clamp_value<int64_t>(b.top, 0, H - 1);
  const int64_t left = clamp_value<int64_t>(b.left, 0, W - 1);
  return Box{top, left, clamp_value<int64_t>(b.height, 1, H - top), clamp_value<int64_t>(b.width, 1, W - left)};
}

// The boxes of a batch, [B, N, 4] read through strides.
template <typename index_t>
struct BoxTable {
  const index_t* data;
  int64_t stride_b, stride_n, stride_c;
  int64_t B, N;
  LMCL_HD Box operator()(int64_t b, int64_t n) const {
    return read_box(data + b * stride_b + n * stride_n, stride_c);
  }
};

// A grid-stride loop over the B * N boxes of a table: f(i, b, n) for box i = b * N + n.
template <typename index_t, typename F>
LMCL_HD inline void for_each_box(const BoxTable<index_t>& boxes, GridIndex g, const F& f) {
  const int64_t total = boxes.B * boxes.N;
  for (int64_t i = g.first(); i < total; i += g.stride()) {
    const int64_t b = i / boxes.N;
    f(i, b, i - b * boxes.N);
  }
}

// The GPU paths' box check for kernels that do not check their boxes themselves: one thread per box,
// a device-side assert on an invalid one (no device->host read).
template <typename index_t>
struct BoxCheckBody {
  struct Params {
    BoxTable<index_t> boxes;
    int64_t H, W;
    OpName op;
  };

  static LMCL_HD void run(const Params& p, GridIndex g) {
    for_each_box(p.boxes, g,
                 [&](int64_t, int64_t b, int64_t n) { check_box(p.op.text, p.boxes(b, n), b, n, p.H, p.W); });
  }
};

}  // namespace lmcl
