// multi_crop and its backward on the CPU: the at::parallel_for backend of host/multi_crop.h, running a
// separable form of the math in kernels/multi_crop.h (same taps, same tap_mix,
// rows first, then columns). Forward: one chunk = a block of output rows of one crop; each row is
// resampled vertically into a small float row (all channels, interleaved) and then horizontally, four
// output pixels at a time. Backward: one chunk = whole image planes (b, c), so every thread owns what it
// writes and the result is bit-reproducible.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "cpu/simd.h"
#include "host/boxes.h"
#include "host/multi_crop.h"
#include "kernels/multi_crop.h"
#include "ops/multi_crop.h"

namespace lmcl {

namespace {

// Output rows per work item: a few items per crop keep both threads busy even at B = 1.
constexpr int64_t kRowsPerItem = 32;

// The column taps of one crop (flip applied) as flat tables: v offsets of the two source pixels within
// the vertically resampled row (kC floats per pixel, the row starting at source column `lo`) and weights.
struct ColumnTable {
  std::vector<int32_t> i0, i1;
  std::vector<float> l0, l1;
  int64_t lo = 0, cols = 0;

  void fill(int64_t width, bool flipped, int64_t out_w, int64_t channels) {
    i0.resize(out_w);
    i1.resize(out_w);
    l0.resize(out_w);
    l1.resize(out_w);
    // Taps are monotonic in x: the first and last column give the source range (either order when flipped).
    const CropTap<float> first = crop_col_tap<float>(0, flipped, width, out_w);
    const CropTap<float> last = crop_col_tap<float>(out_w - 1, flipped, width, out_w);
    lo = std::min(first.i0, last.i0);
    cols = std::max(first.i1, last.i1) - lo + 1;
    for (int64_t x = 0; x < out_w; ++x) {
      const CropTap<float> t = crop_col_tap<float>(x, flipped, width, out_w);
      i0[x] = static_cast<int32_t>((t.i0 - lo) * channels);
      i1[x] = static_cast<int32_t>((t.i1 - lo) * channels);
      l0[x] = t.l0;
      l1[x] = t.l1;
    }
  }
};

// The one place that knows the output layout: element (bn, c, y, 0) of the contiguous
// [B, N, C, out_h, out_w] output; columns are adjacent.
template <typename in_t, typename out_t>
inline out_t* output_row(const MultiCropParams<in_t, out_t>& p, int64_t bn, int64_t c, int64_t y) {
  return p.out + ((bn * p.C + c) * p.out_h + y) * p.out_w;
}

// Float row -> out_t row. bfloat16: round to nearest even on the bits (vectorises); float16: F16C in
// the AVX2 clone (store_output_row), c10::Half's conversion otherwise.
inline void store_row(const float* v, float* o, int64_t n) {
  std::memcpy(o, v, static_cast<size_t>(n) * sizeof(float));
}

inline void store_row(const float* v, c10::BFloat16* o, int64_t n) {
  uint16_t* d = reinterpret_cast<uint16_t*>(o);
  for (int64_t x = 0; x < n; ++x) {
    const uint32_t b = __builtin_bit_cast(uint32_t, v[x]);
    const uint16_t rounded = static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    d[x] = (b & 0x7fffffffu) > 0x7f800000u ? uint16_t(0x7fc0) : rounded;  // NaN stays a quiet NaN
  }
}

inline void store_row(const float* v, c10::Half* o, int64_t n) {
  for (int64_t x = 0; x < n; ++x) {
    o[x] = static_cast<c10::Half>(v[x]);
  }
}

#ifdef LMCL_HAS_AVX2_CLONE
// float16 with F16C (the AVX2 clone), 8 values per instruction; rounds to nearest even like c10::Half.
LMCL_AVX2_CLONE inline void store_row_f16c(const float* v, c10::Half* o, int64_t n) {
  int64_t x = 0;
  for (; x + 8 <= n; x += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + x),
                     _mm256_cvtps_ph(_mm256_loadu_ps(v + x), _MM_FROUND_TO_NEAREST_INT));
  }
  store_row(v + x, o + x, n - x);
}
#endif

template <bool kAvx2, typename out_t>
inline void store_output_row(const float* v, out_t* o, int64_t n) {
#ifdef LMCL_HAS_AVX2_CLONE
  if constexpr (kAvx2 && std::is_same_v<out_t, c10::Half>) {
    store_row_f16c(v, o, n);
    return;
  }
#endif
  store_row(v, o, n);
}

// Output rows y0..y1 of crop bn. v: scratch for one vertically resampled row (cols * kC + 4 floats);
// h: scratch for one output row of every channel (kC * out_w floats).
template <int kC, bool kAvx2, typename in_t, typename out_t>
inline void crop_rows(const MultiCropParams<in_t, out_t>& p, int64_t bn, int64_t y0, int64_t y1, const ColumnTable& t,
                      float* v, float* h) {
  const Box box = crop_source_box(p.boxes, bn, p.H, p.W);
  const in_t* base = p.images + (bn / p.N) * p.s_b + (box.left + t.lo) * p.s_x;
  // uint8 [B, H, W, C] with packed pixels: the row segment is one contiguous run of cols * kC values.
  const bool packed = p.s_x == kC && (kC == 1 || p.s_c == 1);
  const int64_t out_w = p.out_w;
  for (int64_t y = y0; y < y1; ++y) {
    const CropTap<float> ty = crop_tap<float>(y, box.height, p.out_h);
    const in_t* r0 = base + (box.top + ty.i0) * p.s_y;
    const in_t* r1 = base + (box.top + ty.i1) * p.s_y;
    if (packed) {
      for (int64_t k = 0; k < t.cols * kC; ++k) {
        v[k] = tap_mix(ty, static_cast<float>(r0[k]), static_cast<float>(r1[k]));
      }
    } else {
      for (int64_t k = 0; k < t.cols; ++k) {
        for (int c = 0; c < kC; ++c) {
          const int64_t at = k * p.s_x + c * p.s_c;
          v[k * kC + c] = tap_mix(ty, static_cast<float>(r0[at]), static_cast<float>(r1[at]));
        }
      }
    }
    int64_t x = 0;
#if defined(__SSE2__)
    if constexpr (kC == 3) {
      // Four output pixels at a time: each is one 4-float load per tap (3 channels + one ignored lane;
      // v has a spare float after the last pixel), mixed, normalised, then transposed to channel rows.
      const __m128 scale = _mm_setr_ps(p.scale[0], p.scale[1], p.scale[2], 0.0f);
      const __m128 shift = _mm_setr_ps(p.shift[0], p.shift[1], p.shift[2], 0.0f);
      const auto pixel = [&](int64_t j) {
        const __m128 a = _mm_loadu_ps(v + t.i0[j]);
        const __m128 b = _mm_loadu_ps(v + t.i1[j]);
        const __m128 mixed = _mm_add_ps(_mm_mul_ps(_mm_set1_ps(t.l0[j]), a), _mm_mul_ps(_mm_set1_ps(t.l1[j]), b));
        return _mm_add_ps(_mm_mul_ps(mixed, scale), shift);
      };
      for (; x + 4 <= out_w; x += 4) {
        __m128 c0 = pixel(x), c1 = pixel(x + 1), c2 = pixel(x + 2), c3 = pixel(x + 3);
        _MM_TRANSPOSE4_PS(c0, c1, c2, c3);
        _mm_storeu_ps(h + x, c0);
        _mm_storeu_ps(h + out_w + x, c1);
        _mm_storeu_ps(h + 2 * out_w + x, c2);
      }
    }
#endif
    for (int c = 0; c < kC; ++c) {
      for (int64_t j = x; j < out_w; ++j) {
        const CropTap<float> tx{t.i0[j], t.i1[j], t.l0[j], t.l1[j]};
        h[c * out_w + j] = tap_mix(tx, v[t.i0[j] + c], v[t.i1[j] + c]) * p.scale[c] + p.shift[c];
      }
      store_output_row<kAvx2>(h + c * out_w, output_row(p, bn, c, y), out_w);
    }
  }
}

// Work items begin..end (item = crop * blocks + row block).
template <int kC, bool kAvx2, typename in_t, typename out_t>
inline void forward_items(const MultiCropParams<in_t, out_t>& p, int64_t begin, int64_t end) {
  const int64_t blocks = ceil_div(p.out_h, kRowsPerItem);
  ColumnTable table;
  std::vector<float> v(static_cast<size_t>((p.W + 2) * kC + 4));
  std::vector<float> h(static_cast<size_t>(kC * p.out_w));
  int64_t table_crop = -1;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t bn = item / blocks;
    if (bn != table_crop) {
      const Box box = crop_source_box(p.boxes, bn, p.H, p.W);
      table.fill(box.width, crop_flipped(p, bn), p.out_w, kC);
      table_crop = bn;
    }
    const int64_t y0 = (item % blocks) * kRowsPerItem;
    crop_rows<kC, kAvx2>(p, bn, y0, std::min(p.out_h, y0 + kRowsPerItem), table, v.data(), h.data());
  }
}

#ifdef LMCL_HAS_AVX2_CLONE
template <int kC, typename in_t, typename out_t>
LMCL_AVX2_CLONE void forward_items_avx2(const MultiCropParams<in_t, out_t>& p, int64_t begin, int64_t end) {
  forward_items<kC, true>(p, begin, end);
}
#endif

// Backward of crop bn, channel c, into its grad-image plane: per output row, the adjoint of the column
// step into a row of the crop's width (t), then the adjoint of the row step adds t to the two source rows.
template <typename g_t>
inline void crop_plane_backward(const MultiCropBackwardParams<g_t>& p, int64_t bn, int64_t c, ColumnTable& table,
                                float* t) {
  const Box box = crop_source_box(p.boxes, bn, p.H, p.W);
  table.fill(box.width, crop_flipped(p, bn), p.out_w, 1);
  const g_t* go = p.grad + (bn * p.C + c) * p.out_h * p.out_w;
  float* base = p.grad_images + ((bn / p.N) * p.C + c) * p.H * p.W + box.left + table.lo;
  const float scale = p.scale[c];
  for (int64_t y = 0; y < p.out_h; ++y) {
    std::fill(t, t + table.cols, 0.0f);
    for (int64_t x = 0; x < p.out_w; ++x) {
      const float g = static_cast<float>(go[y * p.out_w + x]) * scale;
      t[table.i0[x]] += table.l0[x] * g;
      t[table.i1[x]] += table.l1[x] * g;
    }
    const CropTap<float> ty = crop_tap<float>(y, box.height, p.out_h);
    float* r0 = base + (box.top + ty.i0) * p.W;
    float* r1 = base + (box.top + ty.i1) * p.W;
    for (int64_t k = 0; k < table.cols; ++k) {
      r0[k] += ty.l0 * t[k];
    }
    for (int64_t k = 0; k < table.cols; ++k) {
      r1[k] += ty.l1 * t[k];
    }
  }
}

template <typename g_t>
inline void backward_planes(const MultiCropBackwardParams<g_t>& p, int64_t begin, int64_t end) {
  ColumnTable table;
  std::vector<float> t(static_cast<size_t>(p.W + 2));
  for (int64_t bc = begin; bc < end; ++bc) {
    const int64_t b = bc / p.C;
    for (int64_t n = 0; n < p.N; ++n) {
      crop_plane_backward(p, b * p.N + n, bc % p.C, table, t.data());
    }
  }
}

#ifdef LMCL_HAS_AVX2_CLONE
template <typename g_t>
LMCL_AVX2_CLONE void backward_planes_avx2(const MultiCropBackwardParams<g_t>& p, int64_t begin, int64_t end) {
  backward_planes(p, begin, end);
}
#endif

struct MultiCropCpu {
  // Every box is checked on the host before any kernel runs.
  void check_boxes(const char* op, const at::Tensor& boxes64, int64_t H, int64_t W) const {
    check_boxes_on_host(op, boxes64, H, W);
  }

  template <int kC, typename in_t, typename out_t>
  void forward(const MultiCropParams<in_t, out_t>& p) const {
    at::parallel_for(0, p.B * p.N * ceil_div(p.out_h, kRowsPerItem), 1, [&](int64_t begin, int64_t end) {
#ifdef LMCL_HAS_AVX2_CLONE
      if (cpu_has_avx2()) {
        forward_items_avx2<kC>(p, begin, end);
        return;
      }
#endif
      forward_items<kC, false>(p, begin, end);
    });
  }

  template <typename g_t>
  void backward(const MultiCropBackwardParams<g_t>& p) const {
    // One chunk = whole (b, c) planes of grad_images: the N crops of image b scatter only there.
    at::parallel_for(0, p.B * p.C, 1, [&](int64_t begin, int64_t end) {
#ifdef LMCL_HAS_AVX2_CLONE
      if (cpu_has_avx2()) {
        backward_planes_avx2(p, begin, end);
        return;
      }
#endif
      backward_planes(p, begin, end);
    });
  }
};

at::Tensor multi_crop_cpu(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                          std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                          const std::optional<at::Tensor>& flip, at::ScalarType out_dtype) {
  check_multi_crop_args(images, boxes, size, mean, std, flip, out_dtype);
  return multi_crop_forward(MultiCropCpu{}, images, boxes, size, mean, std, flip, out_dtype);
}

at::Tensor multi_crop_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes,
                                   std::optional<at::ArrayRef<double>> std, const std::optional<at::Tensor>& flip,
                                   int64_t height, int64_t width) {
  check_multi_crop_backward_args(grad, boxes, std, flip, height, width);
  return multi_crop_backward(MultiCropCpu{}, grad, boxes, std, flip, height, width);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("multi_crop", &multi_crop_cpu);
  m.impl("_multi_crop_backward", &multi_crop_backward_cpu);
}

}  // namespace lmcl
