// multi_crop host/device math: bilinear taps, one output pixel and row, launch bodies, the adjoint.
// SPEC §1.1, once, for the CPU kernel, the CUDA kernel and the grid runner. The taps follow F.interpolate
// (bilinear, align_corners=False, antialias=False); pixels are read through the image strides.
#pragma once

#include "kernels/boxes.h"
#include "kernels/common.h"

#include <cstdint>

namespace lmcl {

// Two source indices (relative to the crop) and their weights for one output index along one axis.
template <typename acc_t>
struct CropTap {
  int64_t i0;
  int64_t i1;
  acc_t l0;
  acc_t l1;
};

// ATen's upsample_bilinear2d rule (UpSample.h: area_pixel_compute_source_index, guard_index_and_lambda):
//   src = max((dst + 0.5) * in / out - 0.5, 0); i0 = min(floor(src), in - 1); i1 = i0 + (i0 < in - 1);
//   l1 = clamp(src - i0, 0, 1); l0 = 1 - l1; and the identity when in == out.
// src = num / den with num = (2 dst + 1) in - out and den = 2 out is evaluated exactly in integers, so
// only the final division rounds: at crop sizes of a few hundred pixels a float32 src would already be
// off by ~3e-5 and break the 1e-5 bound against the float64 reference.
template <typename acc_t>
LMCL_HD inline CropTap<acc_t> crop_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  if (in_size == out_size) {
    return CropTap<acc_t>{dst, dst, acc_t(1), acc_t(0)};
  }
  const int64_t num = (2 * dst + 1) * in_size - out_size;
  const int64_t den = 2 * out_size;
  if (num <= 0) {  // src clamped at 0
    return CropTap<acc_t>{0, in_size > 1 ? 1 : 0, acc_t(1), acc_t(0)};
  }
  int64_t i0 = num / den;
  acc_t l1 = static_cast<acc_t>(num - i0 * den) / static_cast<acc_t>(den);
  if (i0 > in_size - 1) {  // unreachable for in, out >= 1 (src < in - 0.5); keeps reads in range
    i0 = in_size - 1;
    l1 = acc_t(1);
  }
  const int64_t i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  return CropTap<acc_t>{i0, i1, acc_t(1) - l1, l1};
}

// One bilinear step along one axis: l0 * a + l1 * b. Every kernel resamples rows first, then columns.
template <typename acc_t>
LMCL_HD inline acc_t tap_mix(const CropTap<acc_t>& t, acc_t a, acc_t b) {
  return t.l0 * a + t.l1 * b;
}

// Box bn of the contiguous int64 [B*N, 4] table, clamped to at least one pixel of the H x W image
// (kernels/boxes.h): valid boxes pass unchanged; the clamp only keeps an unchecked box's reads in range.
LMCL_HD inline Box crop_source_box(const int64_t* boxes, int64_t bn, int64_t H, int64_t W) {
  return nonempty_box(read_box(boxes + 4 * bn, 1), H, W);
}

// The math runs in float32 for every output dtype: SPEC §1.1 allows fp16/bf16 output one ulp of the
// rounded reference plus 1e-5/std[c], and float32 math is ~1e-7 off the exact value.
template <typename in_t, typename out_t>
struct MultiCropParams {
  using acc_t = float;
  const in_t* images;          // read through strides (batch, channel, row, column)
  int64_t s_b, s_c, s_y, s_x;
  int64_t B, N, C, H, W;
  const int64_t* boxes;        // contiguous [B, N, 4]
  const bool* flip;            // [B, N] read through strides, or nullptr
  int64_t flip_sb, flip_sn;
  out_t* out;                  // contiguous [B, N, C, out_h, out_w]
  int64_t out_h, out_w;
  acc_t scale[3];              // out = raw * scale[c] + shift[c]
  acc_t shift[3];
};

template <typename in_t, typename out_t>
LMCL_HD inline bool crop_flipped(const MultiCropParams<in_t, out_t>& p, int64_t bn) {
  return p.flip != nullptr && p.flip[(bn / p.N) * p.flip_sb + (bn % p.N) * p.flip_sn];
}

// Column tap of output column x (flip applied: a mirrored crop reads column out_w - 1 - x).
template <typename acc_t>
LMCL_HD inline CropTap<acc_t> crop_col_tap(int64_t x, bool flipped, int64_t width, int64_t out_w) {
  return crop_tap<acc_t>(flipped ? out_w - 1 - x : x, width, out_w);
}

// One output pixel, all kC channels. r0, r1: the two source rows at the crop's left edge; o: the
// channel-0 output element, channels `plane` apart.
// out = (lx0 * (ly0 * p00 + ly1 * p10) + lx1 * (ly0 * p01 + ly1 * p11)) * scale[c] + shift[c].
template <int kC, typename in_t, typename out_t>
LMCL_HD inline void multi_crop_pixel(const in_t* r0, const in_t* r1, int64_t s_c, int64_t s_x,
                                     const CropTap<float>& ty, const CropTap<float>& tx, const float* scale,
                                     const float* shift, out_t* o, int64_t plane) {
  const int64_t x0 = tx.i0 * s_x;
  const int64_t x1 = tx.i1 * s_x;
  for (int c = 0; c < kC; ++c) {
    const int64_t oc = c * s_c;
    const float left = tap_mix(ty, static_cast<float>(r0[x0 + oc]), static_cast<float>(r1[x0 + oc]));
    const float right = tap_mix(ty, static_cast<float>(r0[x1 + oc]), static_cast<float>(r1[x1 + oc]));
    // out_t is constructible from float on host and device (c10::Half / c10::BFloat16).
    o[c * plane] = static_cast<out_t>(tap_mix(tx, left, right) * scale[c] + shift[c]);
  }
}

// One output pixel of a grid-stride launch (forward or backward): flat index i over B * N * out_h * out_w
// -> its crop, row, column, box and the two bilinear taps (the column tap mirrored for flipped crops).
template <typename acc_t>
struct OutputPixel {
  int64_t bn, y, x;
  Box box;
  CropTap<acc_t> ty, tx;
};

template <typename acc_t, typename Params>
LMCL_HD inline OutputPixel<acc_t> output_pixel(const Params& p, int64_t i) {
  OutputPixel<acc_t> px;
  px.x = i % p.out_w;
  px.y = (i / p.out_w) % p.out_h;
  px.bn = i / (p.out_h * p.out_w);
  px.box = crop_source_box(p.boxes, px.bn, p.H, p.W);
  px.ty = crop_tap<acc_t>(px.y, px.box.height, p.out_h);
  px.tx = crop_col_tap<acc_t>(px.x, crop_flipped(p, px.bn), px.box.width, p.out_w);
  return px;
}

// The CUDA launch: one thread per output pixel (all channels), grid-stride over B * N * out_h * out_w.
template <int kC, typename in_t, typename out_t>
struct MultiCropBody {
  using Params = MultiCropParams<in_t, out_t>;
  using acc_t = typename Params::acc_t;
  static LMCL_HD void run(const Params& p, GridIndex g) {
    const int64_t plane = p.out_h * p.out_w;
    const int64_t items = p.B * p.N * plane;
    for (int64_t i = g.first(); i < items; i += g.stride()) {
      const OutputPixel<acc_t> px = output_pixel<acc_t>(p, i);
      const int64_t x = px.x, y = px.y, bn = px.bn;
      const Box& box = px.box;
      const CropTap<acc_t>& ty = px.ty;
      const CropTap<acc_t>& tx = px.tx;
      const in_t* base = p.images + (bn / p.N) * p.s_b + box.left * p.s_x;
      multi_crop_pixel<kC>(base + (box.top + ty.i0) * p.s_y, base + (box.top + ty.i1) * p.s_y, p.s_c, p.s_x, ty, tx,
                           p.scale, p.shift, p.out + bn * p.C * plane + y * p.out_w + x, plane);
    }
  }
};

// ---- backward: the adjoint of the bilinear resample (float32 images only) ----

// Add v to *dst: an atomic add on the GPU, a plain add on the host (the grid runner is serial).
LMCL_HD inline void accumulate(float* dst, float v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(dst, v);
#else
  *dst += v;
#endif
}

// Scatter one output gradient g (already divided by std) of one channel to its four source pixels.
// r0, r1: the channel's two grad-image rows at the crop's left edge (column stride 1).
LMCL_HD inline void multi_crop_tap_backward(float* r0, float* r1, const CropTap<float>& ty, const CropTap<float>& tx,
                                            float g) {
  const float gt = ty.l0 * g;
  const float gb = ty.l1 * g;
  accumulate(r0 + tx.i0, tx.l0 * gt);
  accumulate(r0 + tx.i1, tx.l1 * gt);
  accumulate(r1 + tx.i0, tx.l0 * gb);
  accumulate(r1 + tx.i1, tx.l1 * gb);
}

template <typename g_t>
struct MultiCropBackwardParams {
  const g_t* grad;             // contiguous [B, N, C, out_h, out_w]
  int64_t B, N, C, H, W;
  const int64_t* boxes;        // contiguous [B, N, 4]
  const bool* flip;            // [B, N] read through strides, or nullptr
  int64_t flip_sb, flip_sn;
  float* grad_images;          // contiguous [B, C, H, W], zero-filled
  int64_t out_h, out_w;
  float scale[3];              // 1 / std[c]
};

template <typename g_t>
LMCL_HD inline bool crop_flipped(const MultiCropBackwardParams<g_t>& p, int64_t bn) {
  return p.flip != nullptr && p.flip[(bn / p.N) * p.flip_sb + (bn % p.N) * p.flip_sn];
}

// The CUDA launch of the backward: one thread per output pixel (all channels), atomics into grad_images.
template <typename g_t>
struct MultiCropBackwardBody {
  using Params = MultiCropBackwardParams<g_t>;
  static LMCL_HD void run(const Params& p, GridIndex g) {
    const int64_t plane = p.out_h * p.out_w;
    const int64_t items = p.B * p.N * plane;
    for (int64_t i = g.first(); i < items; i += g.stride()) {
      const OutputPixel<float> px = output_pixel<float>(p, i);
      const int64_t x = px.x, y = px.y, bn = px.bn;
      const Box& box = px.box;
      const CropTap<float>& ty = px.ty;
      const CropTap<float>& tx = px.tx;
      for (int64_t c = 0; c < p.C; ++c) {
        float* base = p.grad_images + ((bn / p.N) * p.C + c) * p.H * p.W + box.left;
        const float gv = static_cast<float>(p.grad[(bn * p.C + c) * plane + y * p.out_w + x]) * p.scale[c];
        multi_crop_tap_backward(base + (box.top + ty.i0) * p.W, base + (box.top + ty.i1) * p.W, ty, tx, gv);
      }
    }
  }
};

}  // namespace lmcl
