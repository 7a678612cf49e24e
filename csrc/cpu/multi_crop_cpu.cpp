// multi_crop and its backward on the CPU: the at::parallel_for backend of host/multi_crop.h, running a separable
// form of the math in kernels/multi_crop.h (same taps, same tap_mix, rows first, then columns, then the affine, so
// the result is bit-identical to the per-pixel body).
// Forward: work items = whole crops (blocks of output rows for the last few), taken from a shared counter
// (forward_items). Each output row is resampled vertically into a small channel-planar float row (line-aligned, it
// stays in L1); the AVX-512 clone reads uint8 RGB pixels 16 at a time (one byte permute per channel) and, when two
// output rows share source rows (enlarged crops, or the next row pair), resamples both from one load of each source
// row. Then the columns: 8 (AVX2) or 16 (AVX-512) output columns at a time, one template over the clone's register
// type: the two taps picked by register permutes from a window of two registers (at a register boundary where it
// fits, so no load straddles two cache lines) described by a per-crop table, or gathered; tap_mix, the affine, and
// the store in the output dtype, two registers at a time (bfloat16 by VCVTNE2PS2BF16 where the CPU has it, unchecked
// when no output can be a denormal or NaN); 3-channel channels-last output interleaves the channels' registers into
// pixel order before the store.
// Backward: one chunk = whole image planes (b, c), so every thread owns what it writes and the result is
// bit-reproducible.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <new>
#include <vector>

#include "cpu/simd.h"
#include "host/boxes.h"
#include "host/multi_crop.h"
#include "kernels/multi_crop.h"
#include "ops/multi_crop.h"

namespace lmcl {

namespace {

// Vectors of cache-line-aligned storage: 64-byte vector loads and stores at multiples of 16 floats
// never straddle two lines.
template <typename T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <typename U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* q, size_t) { ::operator delete(q, std::align_val_t(64)); }
  bool operator==(const LineAligned&) const { return true; }
  bool operator!=(const LineAligned&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, LineAligned<T>>;

// Output rows per work item of the last crops (forward_items): a few items per crop keep every thread busy
// to the end, even at B = 1.
constexpr int64_t kRowsPerItem = 32;

// Output columns per vector block of the forward's column step: one register of floats of that clone.
constexpr int64_t simd_block(int simd) { return simd >= kSimdAvx512 ? 16 : simd == kSimdAvx2 ? 8 : 0; }

// The column taps of one crop (flip applied) as flat tables: offsets of the two source columns within
// the vertically resampled row (channel-planar floats, the row starting at source column `lo`) and weights.
// The vector forward also gets, per block of `block` output columns, the block's first source column
// `block_lo` and each tap's offset from it (p0, p1, below 2 * block): the column step loads the 2 * block
// floats from block_lo on and picks the taps with register permutes instead of gathers. A block whose
// taps span more (a crop shrunk about 2x or more) has block_lo = -1 and gathers.
struct ColumnTable {
  AlignedVector<int32_t> i0, i1;
  AlignedVector<float> l0, l1;
  AlignedVector<int32_t> block_lo, p0, p1;
  int64_t lo = 0, cols = 0;

  void fill(int64_t width, bool flipped, int64_t out_w) {
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
      i0[x] = static_cast<int32_t>(t.i0 - lo);
      i1[x] = static_cast<int32_t>(t.i1 - lo);
      l0[x] = t.l0;
      l1[x] = t.l1;
    }
  }

  void fill_blocks(int64_t out_w, int64_t block) {
    const int64_t blocks = block > 0 ? out_w / block : 0;
    block_lo.resize(blocks);
    p0.resize(blocks * block);
    p1.resize(blocks * block);
    for (int64_t k = 0; k < blocks; ++k) {
      const int32_t* a = i0.data() + k * block;
      const int32_t* b = i1.data() + k * block;
      int32_t first = a[0], end = b[0];
      for (int64_t j = 0; j < block; ++j) {
        first = std::min({first, a[j], b[j]});
        end = std::max({end, a[j], b[j]});
      }
      // A window that fits from the aligned-down first column takes aligned loads (no cache-line splits).
      const int32_t aligned = first & ~static_cast<int32_t>(block - 1);
      if (end - aligned < 2 * block) {
        first = aligned;
      }
      block_lo[k] = end - first < 2 * block ? first : -1;
      for (int64_t j = 0; j < block; ++j) {
        p0[k * block + j] = a[j] - first;
        p1[k * block + j] = b[j] - first;
      }
    }
  }
};

// The one place that knows the output layout: element (bn, c, y, 0) of the [B, N, C, out_h, out_w]
// output; its columns are o_sx apart (1 for NCHW crops, C for channels-last crops).
template <typename in_t, typename out_t>
inline out_t* output_row(const MultiCropParams<in_t, out_t>& p, int64_t bn, int64_t c, int64_t y) {
  return p.out + bn * p.o_sn + c * p.o_sc + y * p.o_sy;
}

// Float row -> out_t row. bfloat16: round to nearest even on the bits (vectorises); float16:
// c10::Half's conversion (nearest even; the vector clones use F16C, which rounds alike).
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

template <typename out_t>
inline void store_strided(const float* v, out_t* o, int64_t n, int64_t o_sx) {
  if (o_sx == 1) {
    store_row(v, o, n);
    return;
  }
  for (int64_t x = 0; x < n; ++x) {  // channels-last crops: one element per pixel, C apart
    store_row(v + x, o + x * o_sx, 1);
  }
}

// Row step of one output row: the two source rows r0, r1 (at the crop's source column lo) mixed into
// kC channel planes of v (stride vs), source columns k0..cols. Vectorised by the compiler where a
// channel's samples are contiguous (float32 NCHW, one channel); interleaved channels (uint8 NHWC) take
// the clones' paths below for all but the last few columns.
template <int kC, typename in_t>
inline void resample_rows(const in_t* r0, const in_t* r1, int64_t s_c, int64_t s_x, int64_t k0, int64_t cols,
                          const CropTap<float>& ty, float* v, int64_t vs) {
  for (int c = 0; c < kC; ++c) {
    const in_t* a = r0 + c * s_c;
    const in_t* b = r1 + c * s_c;
    float* d = v + c * vs;
    if (s_x == 1) {
      for (int64_t k = k0; k < cols; ++k) {
        d[k] = tap_mix(ty, static_cast<float>(a[k]), static_cast<float>(b[k]));
      }
    } else {
      for (int64_t k = k0; k < cols; ++k) {
        d[k] = tap_mix(ty, static_cast<float>(a[k * s_x]), static_cast<float>(b[k * s_x]));
      }
    }
  }
}

// Column step of channel plane v for output columns x0..x1: tap_mix of the two taps, then the affine.
inline void resample_columns(const float* v, const ColumnTable& t, int64_t x0, int64_t x1, float scale, float shift,
                             float* h) {
  for (int64_t x = x0; x < x1; ++x) {
    const CropTap<float> tx{t.i0[x], t.i1[x], t.l0[x], t.l1[x]};
    h[x] = tap_mix(tx, v[t.i0[x]], v[t.i1[x]]) * scale + shift;
  }
}

#ifdef LMCL_HAS_AVX2_CLONE
// ---- AVX2 clone: 8 floats ----

// 8 samples as floats: 8 bytes (uint8) or 8 floats.
LMCL_AVX2_CLONE inline __m256 load8(const uint8_t* s) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s))));
}
LMCL_AVX2_CLONE inline __m256 load8(const float* s) { return _mm256_loadu_ps(s); }

// Row step of 3 interleaved channels (pixels 3 samples apart, channels adjacent: uint8 NHWC), 8 pixels at
// a time: tap_mix on the interleaved samples, then split into the three channel planes (2 blends and a
// permute per plane). Returns the first column left to the scalar loop.
template <typename in_t>
LMCL_AVX2_CLONE inline int64_t resample_rows_rgb_avx2(const in_t* r0, const in_t* r1, int64_t cols,
                                                      const CropTap<float>& ty, float* v, int64_t vs) {
  const __m256 w0 = _mm256_set1_ps(ty.l0);
  const __m256 w1 = _mm256_set1_ps(ty.l1);
  const __m256i to_r = _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5);
  const __m256i to_g = _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6);
  const __m256i to_b = _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7);
  int64_t k = 0;
  for (; k + 8 <= cols; k += 8) {
    const in_t* a = r0 + 3 * k;
    const in_t* b = r1 + 3 * k;
    // m0: R0 G0 B0 R1 G1 B1 R2 G2, m1: B2 R3 G3 B3 R4 G4 B4 R5, m2: G5 B5 R6 G6 B6 R7 G7 B7
    const __m256 m0 = _mm256_add_ps(_mm256_mul_ps(w0, load8(a)), _mm256_mul_ps(w1, load8(b)));
    const __m256 m1 = _mm256_add_ps(_mm256_mul_ps(w0, load8(a + 8)), _mm256_mul_ps(w1, load8(b + 8)));
    const __m256 m2 = _mm256_add_ps(_mm256_mul_ps(w0, load8(a + 16)), _mm256_mul_ps(w1, load8(b + 16)));
    const __m256 r = _mm256_blend_ps(_mm256_blend_ps(m0, m1, 0x92), m2, 0x24);
    const __m256 g = _mm256_blend_ps(_mm256_blend_ps(m0, m1, 0x24), m2, 0x49);
    const __m256 bl = _mm256_blend_ps(_mm256_blend_ps(m0, m1, 0x49), m2, 0x92);
    _mm256_storeu_ps(v + k, _mm256_permutevar8x32_ps(r, to_r));
    _mm256_storeu_ps(v + vs + k, _mm256_permutevar8x32_ps(g, to_g));
    _mm256_storeu_ps(v + 2 * vs + k, _mm256_permutevar8x32_ps(bl, to_b));
  }
  return k;
}

// 8 results -> out_t at o: float32 as is, bfloat16 rounded to nearest even on the bits (as store_row),
// float16 by F16C.
LMCL_AVX2_CLONE inline void store8(__m256 r, float* o) { _mm256_storeu_ps(o, r); }
LMCL_AVX2_CLONE inline void store8(__m256 r, c10::BFloat16* o) {
  const __m256i b = _mm256_castps_si256(r);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i h = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), odd), 16);
  h = _mm256_blendv_epi8(h, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(_mm256_cmp_ps(r, r, _CMP_UNORD_Q)));
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_castsi256_si128(packed));
}
LMCL_AVX2_CLONE inline void store8(__m256 r, c10::Half* o) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT));
}

// The three channel values of 8 pixels, r, g, b, as 24 pixel-interleaved values (channels-last output) in
// three registers: the inverse of resample_rows_rgb_avx2's split (a permute per plane, 2 blends per register).
LMCL_AVX2_CLONE inline void interleave_rgb8(const __m256* rgb, __m256* out) {
  const __m256 r = _mm256_permutevar8x32_ps(rgb[0], _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
  const __m256 g = _mm256_permutevar8x32_ps(rgb[1], _mm256_setr_epi32(5, 0, 3, 6, 1, 4, 7, 2));
  const __m256 b = _mm256_permutevar8x32_ps(rgb[2], _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
  out[0] = _mm256_blend_ps(_mm256_blend_ps(r, g, 0x92), b, 0x24);  // R0 G0 B0 R1 G1 B1 R2 G2
  out[1] = _mm256_blend_ps(_mm256_blend_ps(b, r, 0x92), g, 0x24);  // B2 R3 G3 B3 R4 G4 B4 R5
  out[2] = _mm256_blend_ps(_mm256_blend_ps(g, b, 0x92), r, 0x24);  // G5 B5 R6 G6 B6 R7 G7 B7
}

// ---- AVX-512 clone: 16 floats ----

// How the row step of the AVX-512 clone reads its source rows: one output row from rows a, b, or two
// output rows from a, b and a, b again (kSamePair) or from a, b and b, c (kNextPair). Two output rows
// that share source rows load and convert each of them once.
enum RowPairing { kOneRow, kSamePair, kNextPair };

// Row step of 16 pixels of 3 interleaved uint8 channels (48 bytes of each source row), stored from v + k
// (and v2 + k) in each plane: one byte permute per channel spreads its 16 samples into 32-bit lanes,
// zero-extended (VBMI). w: the taps of the first output row, u: of the second.
template <RowPairing kPairing>
LMCL_AVX512_CLONE inline void mix16_rgb(__m512i a, __m512i b, __m512i c, const __m512* w, const __m512* u, float* v,
                                        float* v2, int64_t vs) {
  const __mmask64 low_bytes = 0x1111111111111111ull;  // byte 0 of every 32-bit lane
  const __m512i pixel = _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45);
  for (int ch = 0; ch < 3; ++ch) {
    const __m512i pick = _mm512_add_epi32(pixel, _mm512_set1_epi32(ch));
    const __m512 pa = _mm512_cvtepi32_ps(_mm512_maskz_permutexvar_epi8(low_bytes, pick, a));
    const __m512 pb = _mm512_cvtepi32_ps(_mm512_maskz_permutexvar_epi8(low_bytes, pick, b));
    _mm512_storeu_ps(v + ch * vs, _mm512_add_ps(_mm512_mul_ps(w[0], pa), _mm512_mul_ps(w[1], pb)));
    if constexpr (kPairing == kSamePair) {
      _mm512_storeu_ps(v2 + ch * vs, _mm512_add_ps(_mm512_mul_ps(u[0], pa), _mm512_mul_ps(u[1], pb)));
    } else if constexpr (kPairing == kNextPair) {
      const __m512 pc = _mm512_cvtepi32_ps(_mm512_maskz_permutexvar_epi8(low_bytes, pick, c));
      _mm512_storeu_ps(v2 + ch * vs, _mm512_add_ps(_mm512_mul_ps(u[0], pb), _mm512_mul_ps(u[1], pc)));
    }
  }
}

// Row step of 3 interleaved uint8 channels (source rows r0, r1 and, for kNextPair, r2), 16 pixels at a
// time: plain 64-byte loads while they stay inside the crop's row, masked loads for the last pixels (a
// row may end at the image's last byte). The stores may run past cols (v has room for 2 * 16 more floats
// per plane, never read as taps).
template <RowPairing kPairing>
LMCL_AVX512_CLONE inline int64_t resample_rows_rgb_avx512(const uint8_t* r0, const uint8_t* r1, const uint8_t* r2,
                                                          int64_t cols, const CropTap<float>& ty,
                                                          const CropTap<float>& ty2, float* v, float* v2, int64_t vs) {
  const __m512 w[2] = {_mm512_set1_ps(ty.l0), _mm512_set1_ps(ty.l1)};
  const __m512 u[2] = {_mm512_set1_ps(ty2.l0), _mm512_set1_ps(ty2.l1)};
  const __m512i none = _mm512_setzero_si512();
  int64_t k = 0;
  for (; 3 * k + 64 <= 3 * cols; k += 16) {
    mix16_rgb<kPairing>(_mm512_loadu_si512(r0 + 3 * k), _mm512_loadu_si512(r1 + 3 * k),
                        kPairing == kNextPair ? _mm512_loadu_si512(r2 + 3 * k) : none, w, u, v + k, v2 + k, vs);
  }
  for (; k < cols; k += 16) {
    const __mmask64 bytes = (~__mmask64(0)) >> (64 - 3 * std::min<int64_t>(16, cols - k));
    mix16_rgb<kPairing>(_mm512_maskz_loadu_epi8(bytes, r0 + 3 * k), _mm512_maskz_loadu_epi8(bytes, r1 + 3 * k),
                        kPairing == kNextPair ? _mm512_maskz_loadu_epi8(bytes, r2 + 3 * k) : none, w, u, v + k,
                        v2 + k, vs);
  }
  return cols;
}

// Register k of the 48 pixel-interleaved values of 16 pixels (channels-last output): element i is channel
// (16 k + i) % 3 of pixel (16 k + i) / 3. rg_index picks it from r (0-15) or g (16-31); b_index from b
// where b_lanes is set.
struct RgbInterleave {
  int32_t rg_index[3][16];
  int32_t b_index[3][16];
  __mmask16 b_lanes[3];
};
constexpr RgbInterleave rgb_interleave_table() {
  RgbInterleave t{};
  for (int k = 0; k < 3; ++k) {
    for (int i = 0; i < 16; ++i) {
      const int pixel = (16 * k + i) / 3, channel = (16 * k + i) % 3;
      t.rg_index[k][i] = channel == 1 ? 16 + pixel : pixel;
      t.b_index[k][i] = pixel;
      if (channel == 2) {
        t.b_lanes[k] = static_cast<__mmask16>(t.b_lanes[k] | (1u << i));
      }
    }
  }
  return t;
}
constexpr RgbInterleave kRgbInterleave = rgb_interleave_table();

LMCL_AVX512_CLONE inline void interleave_rgb16(const __m512* rgb, __m512* out) {
  for (int k = 0; k < 3; ++k) {
    const __m512 rg = _mm512_permutex2var_ps(rgb[0], _mm512_loadu_si512(kRgbInterleave.rg_index[k]), rgb[1]);
    out[k] = _mm512_mask_permutexvar_ps(rg, kRgbInterleave.b_lanes[k], _mm512_loadu_si512(kRgbInterleave.b_index[k]),
                                        rgb[2]);
  }
}

LMCL_AVX512_CLONE inline void store16(__m512 r, float* o) { _mm512_storeu_ps(o, r); }
LMCL_AVX512_CLONE inline void store16(__m512 r, c10::BFloat16* o) {
  const __m512i b = _mm512_castps_si512(r);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i h = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), odd), 16);
  h = _mm512_mask_mov_epi32(h, _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtepi32_epi16(h));
}
LMCL_AVX512_CLONE inline void store16(__m512 r, c10::Half* o) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT));
}

// bfloat16 by VCVTNEPS2BF16 (the AVX512-BF16 clone): nearest even like store_row, but it flushes
// denormals and keeps NaN payloads, so a vector holding either takes the integer rounding.
LMCL_AVX512BF16_CLONE inline void store16_bf16_insn(__m512 r, c10::BFloat16* o) {
  if (_mm512_fpclass_ps_mask(r, 0xa1) != 0) {  // quiet NaN (0x01), denormal (0x20), signalling NaN (0x80)
    store16(r, o);
    return;
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(r)));
}

// ---- the column step of both clones: one template over a register type ----

// One register of floats of the AVX2 clone and the column step's operations on it. Taps: a block's tap
// offsets (0 .. 15 from its first column) for vpermps, which reads bits 0-2; bit 3 (the second
// register), shifted into the sign bit, drives a blend.
struct Avx2Floats {
  using V = __m256;
  static constexpr int kWidth = 8;
  struct Taps {
    __m256i offset;
    __m256 high;
  };
  LMCL_AVX2_CLONE static V load(const float* s) { return _mm256_loadu_ps(s); }
  LMCL_AVX2_CLONE static V set1(float x) { return _mm256_set1_ps(x); }
  LMCL_AVX2_CLONE static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  LMCL_AVX2_CLONE static V add(V a, V b) { return _mm256_add_ps(a, b); }
  LMCL_AVX2_CLONE static __m256i load_index(const int32_t* i) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(i));
  }
  LMCL_AVX2_CLONE static Taps taps(const int32_t* p) {
    const __m256i offset = load_index(p);
    return Taps{offset, _mm256_castsi256_ps(_mm256_slli_epi32(offset, 28))};
  }
  LMCL_AVX2_CLONE static V pick(V lo, V hi, const Taps& t) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, t.offset), _mm256_permutevar8x32_ps(hi, t.offset), t.high);
  }
  LMCL_AVX2_CLONE static V gather(const float* s, __m256i index) { return _mm256_i32gather_ps(s, index, 4); }
  LMCL_AVX2_CLONE static void interleave_rgb(const V* rgb, V* out) { interleave_rgb8(rgb, out); }
  template <typename out_t>
  LMCL_AVX2_CLONE static void store(V r, out_t* o) {
    store8(r, o);
  }
  template <typename out_t>
  LMCL_AVX2_CLONE static void store2(V a, V b, out_t* o) {  // a, then b: 2 * kWidth values
    store8(a, o);
    store8(b, o + kWidth);
  }
};

// The AVX-512 clone's register: each tap is one two-register permute.
struct Avx512Floats {
  using V = __m512;
  static constexpr int kWidth = 16;
  using Taps = __m512i;
  LMCL_AVX512_CLONE static V load(const float* s) { return _mm512_loadu_ps(s); }
  LMCL_AVX512_CLONE static V set1(float x) { return _mm512_set1_ps(x); }
  LMCL_AVX512_CLONE static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  LMCL_AVX512_CLONE static V add(V a, V b) { return _mm512_add_ps(a, b); }
  LMCL_AVX512_CLONE static __m512i load_index(const int32_t* i) { return _mm512_loadu_si512(i); }
  LMCL_AVX512_CLONE static Taps taps(const int32_t* p) { return load_index(p); }
  LMCL_AVX512_CLONE static V pick(V lo, V hi, Taps t) { return _mm512_permutex2var_ps(lo, t, hi); }
  LMCL_AVX512_CLONE static V gather(const float* s, __m512i index) { return _mm512_i32gather_ps(index, s, 4); }
  LMCL_AVX512_CLONE static void interleave_rgb(const V* rgb, V* out) { interleave_rgb16(rgb, out); }
  template <typename out_t>
  LMCL_AVX512_CLONE static void store(V r, out_t* o) {
    store16(r, o);
  }
  template <typename out_t>
  LMCL_AVX512_CLONE static void store2(V a, V b, out_t* o) {
    store16(a, o);
    store16(b, o + kWidth);
  }
};

// The AVX512-BF16 clone: bfloat16 stored by VCVTNEPS2BF16, checked for denormals and NaNs unless
// kNormalOutput (the call writes neither: normal_output_only).
template <bool kNormalOutput>
struct Avx512Bf16Floats : Avx512Floats {
  template <typename out_t>
  LMCL_AVX512BF16_CLONE static void store(V r, out_t* o) {
    if constexpr (!std::is_same_v<out_t, c10::BFloat16>) {
      store16(r, o);
    } else if constexpr (kNormalOutput) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(r)));
    } else {
      store16_bf16_insn(r, o);
    }
  }
  // Two registers of bfloat16 as one 64-byte store (VCVTNE2PS2BF16): half the stores of the output.
  template <typename out_t>
  LMCL_AVX512BF16_CLONE static void store2(V a, V b, out_t* o) {
    if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
      if (kNormalOutput || (_mm512_fpclass_ps_mask(a, 0xa1) | _mm512_fpclass_ps_mask(b, 0xa1)) == 0) {
        _mm512_storeu_si512(o, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));
        return;
      }
    }
    store(a, o);
    store(b, o + kWidth);
  }
};

// Inlined only into its clone (flatten), so the vector arguments never cross a call.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
// Column step of kC channel planes for the whole blocks of an output row, F::kWidth columns per block: both
// taps picked by permutes from the two registers loaded from the block's first column (or gathered), then
// tap_mix and the affine, as resample_columns. Stored to o[c] (each channel's contiguous row), or, with
// kInterleaved (channels-last output, kC = 3), as pixel-interleaved values from o[0] on.
template <class F, int kC, bool kInterleaved, typename out_t>
inline void resample_columns_simd(const float* v, int64_t vs, const ColumnTable& t, const float* scale,
                                  const float* shift, out_t* const* o) {
  using V = typename F::V;
  V scale_c[kC], shift_c[kC];
  for (int c = 0; c < kC; ++c) {
    scale_c[c] = F::set1(scale[c]);
    shift_c[c] = F::set1(shift[c]);
  }
  // The kC results of block k.
  const auto block = [&](int64_t k, V* result) {
    const int64_t x = k * F::kWidth;
    const V w0 = F::load(t.l0.data() + x);
    const V w1 = F::load(t.l1.data() + x);
    const int32_t first = t.block_lo[k];
    if (first >= 0) {
      const typename F::Taps p0 = F::taps(t.p0.data() + x);
      const typename F::Taps p1 = F::taps(t.p1.data() + x);
      for (int c = 0; c < kC; ++c) {
        const float* s = v + c * vs + first;
        const V lo = F::load(s);
        const V hi = F::load(s + F::kWidth);
        const V mixed = F::add(F::mul(w0, F::pick(lo, hi, p0)), F::mul(w1, F::pick(lo, hi, p1)));
        result[c] = F::add(F::mul(mixed, scale_c[c]), shift_c[c]);
      }
    } else {
      const auto g0 = F::load_index(t.i0.data() + x);
      const auto g1 = F::load_index(t.i1.data() + x);
      for (int c = 0; c < kC; ++c) {
        const float* s = v + c * vs;
        const V mixed = F::add(F::mul(w0, F::gather(s, g0)), F::mul(w1, F::gather(s, g1)));
        result[c] = F::add(F::mul(mixed, scale_c[c]), shift_c[c]);
      }
    }
  };
  // Blocks in pairs, stored two registers at a time (F::store2); an odd last block alone.
  const int64_t blocks = static_cast<int64_t>(t.block_lo.size());
  for (int64_t k = 0; k < blocks; k += 2) {
    const int64_t x = k * F::kWidth;
    const bool pair = k + 1 < blocks;
    V first[kC], second[kC];
    block(k, first);
    if (pair) {
      block(k + 1, second);
    }
    if constexpr (kInterleaved) {
      static_assert(kC == 3, "pixel-interleaved stores are for 3 channels");
      V pixels[6];  // the pair's 96 values: contiguous from o[0] + 3 x
      F::interleave_rgb(first, pixels);
      out_t* o_x = o[0] + 3 * x;
      if (pair) {
        F::interleave_rgb(second, pixels + 3);
        for (int j = 0; j < 6; j += 2) {
          F::store2(pixels[j], pixels[j + 1], o_x + j * F::kWidth);
        }
      } else {
        for (int j = 0; j < 3; ++j) {
          F::store(pixels[j], o_x + j * F::kWidth);
        }
      }
    } else {
      for (int c = 0; c < kC; ++c) {
        if (pair) {
          F::store2(first[c], second[c], o[c] + x);
        } else {
          F::store(first[c], o[c] + x);
        }
      }
    }
  }
}
#pragma GCC diagnostic pop
#endif

// Column step of output row y of crop bn from its vertically resampled row v: whole vector blocks by the
// clone's template (contiguous output rows, or 3 channels' pixel-interleaved rows of channels-last
// output), the rest per column.
template <int kC, int kSimd, bool kNormalOutput, typename in_t, typename out_t>
inline void crop_row_columns(const MultiCropParams<in_t, out_t>& p, int64_t bn, int64_t y, const ColumnTable& t,
                             const float* v, int64_t vs, float* h) {
  out_t* o[kC];
  for (int c = 0; c < kC; ++c) {
    o[c] = output_row(p, bn, c, y);
  }
  int64_t x = 0;
#ifdef LMCL_HAS_AVX2_CLONE
  if constexpr (kSimd >= kSimdAvx2) {
    using F = std::conditional_t<kSimd == kSimdAvx512Bf16, Avx512Bf16Floats<kNormalOutput>,
                                 std::conditional_t<kSimd == kSimdAvx512, Avx512Floats, Avx2Floats>>;
    if (p.o_sx == 1) {
      resample_columns_simd<F, kC, false>(v, vs, t, p.scale, p.shift, o);
      x = static_cast<int64_t>(t.block_lo.size()) * simd_block(kSimd);
    } else if constexpr (kC == 3) {
      if (p.o_sx == 3 && p.o_sc == 1) {
        resample_columns_simd<F, kC, true>(v, vs, t, p.scale, p.shift, o);
        x = static_cast<int64_t>(t.block_lo.size()) * simd_block(kSimd);
      }
    }
  }
#endif
  for (int c = 0; c < kC; ++c) {
    resample_columns(v + c * vs, t, x, p.out_w, p.scale[c], p.shift[c], h);
    store_strided(h + x, o[c] + x * p.o_sx, p.out_w - x, p.o_sx);
  }
}

// Output rows y0..y1 of crop bn. v: scratch for two vertically resampled rows (each kC planes of vs
// floats, vs >= cols + 2 * simd_block(kSimd)); h: scratch for one output row of one channel (out_w
// floats). kNormalOutput: the call writes no denormal or NaN (normal_output_only), so the AVX512-BF16
// clone stores bfloat16 without a check.
template <int kC, int kSimd, bool kNormalOutput, typename in_t, typename out_t>
inline void crop_rows(const MultiCropParams<in_t, out_t>& p, int64_t bn, int64_t y0, int64_t y1, const ColumnTable& t,
                      float* v, int64_t vs, float* h) {
  const Box box = crop_source_box(p.boxes, bn, p.H, p.W);
  const in_t* base = p.images + (bn / p.N) * p.s_b + (box.left + t.lo) * p.s_x;
  float* v2 = v + kC * vs;
  for (int64_t y = y0; y < y1;) {
    const CropTap<float> ty = crop_tap<float>(y, box.height, p.out_h);
    const in_t* r0 = base + (box.top + ty.i0) * p.s_y;
    const in_t* r1 = base + (box.top + ty.i1) * p.s_y;
    if (y + 2 < y1) {  // a row of the next row pair: its first lines are not streamed in yet when it is read
      const char* ahead =
          reinterpret_cast<const char*>(base + (box.top + crop_tap<float>(y + 2, box.height, p.out_h).i1) * p.s_y);
      for (int64_t byte = 0; byte < t.cols * p.s_x * static_cast<int64_t>(sizeof(in_t)); byte += 64) {
        __builtin_prefetch(ahead + byte);
      }
    }
    int64_t k0 = 0;
    bool pair = false;  // rows y and y + 1 resampled together into v and v2
#ifdef LMCL_HAS_AVX2_CLONE
    if constexpr (kSimd >= kSimdAvx2 && kC == 3) {
      if (p.s_x == 3 && p.s_c == 1) {  // interleaved channels, packed pixels
        if constexpr (kSimd >= kSimdAvx512 && std::is_same_v<in_t, uint8_t>) {
          const CropTap<float> ty2 = crop_tap<float>(y + 1, box.height, p.out_h);
          if (y + 1 < y1 && ty2.i0 == ty.i0 && ty2.i1 == ty.i1) {  // enlarged crops: the same source rows
            k0 = resample_rows_rgb_avx512<kSamePair>(r0, r1, nullptr, t.cols, ty, ty2, v, v2, vs);
            pair = true;
          } else if (y + 1 < y1 && ty2.i0 == ty.i1 && ty.i1 != ty.i0) {  // the next source row pair
            k0 = resample_rows_rgb_avx512<kNextPair>(r0, r1, base + (box.top + ty2.i1) * p.s_y, t.cols, ty, ty2, v,
                                                     v2, vs);
            pair = true;
          } else {
            k0 = resample_rows_rgb_avx512<kOneRow>(r0, r1, nullptr, t.cols, ty, ty, v, v, vs);
          }
        } else {
          k0 = resample_rows_rgb_avx2(r0, r1, t.cols, ty, v, vs);
        }
      }
    }
#endif
    resample_rows<kC>(r0, r1, p.s_c, p.s_x, k0, t.cols, ty, v, vs);
    crop_row_columns<kC, kSimd, kNormalOutput>(p, bn, y, t, v, vs, h);
    if (pair) {
      crop_row_columns<kC, kSimd, kNormalOutput>(p, bn, y + 1, t, v2, vs, h);
    }
    y += pair ? 2 : 1;
  }
}

// Whether every output of the call is zero or a normal finite float, so VCVTNEPS2BF16 (which flushes
// denormals and keeps NaN payloads) rounds it as store_row does. Holds for uint8 samples with a moderate
// affine: a weight is 0 or at least 2^-33 (crop_tap: 1 - l1 >= 2^-24, l1 >= 1 / (2 out) for out < 2^32),
// so a nonzero raw value (two tap_mix of samples 0..255) lies in [2^-66, 256); raw * scale is then 0 or
// in [2^-96, 2^98], and its sum with a shift that is 0 or in [2^-100, 2^100] is 0 or a multiple of 2^-123
// below 2^101: normal.
template <typename in_t, typename out_t>
inline bool normal_output_only(const MultiCropParams<in_t, out_t>& p) {
  if (!std::is_same_v<in_t, uint8_t> || p.out_h >= (int64_t(1) << 32) || p.out_w >= (int64_t(1) << 32)) {
    return false;
  }
  for (int64_t c = 0; c < p.C; ++c) {
    const float scale = std::fabs(p.scale[c]), shift = std::fabs(p.shift[c]);
    const bool scale_ok = scale >= 0x1p-30f && scale <= 0x1p90f;
    const bool shift_ok = shift == 0.0f || (shift >= 0x1p-100f && shift <= 0x1p100f);
    if (!scale_ok || !shift_ok) {
      return false;
    }
  }
  return true;
}

// Work items taken from a shared counter until none is left, so a thread that finishes early (small crops,
// or a core shared with another process) takes more. An item is a whole crop, except for the last
// `threads` crops, which are split into blocks of kRowsPerItem rows so that the threads finish together: a
// thread then builds the column table of a crop once (not once per row block, as when the threads take
// turns at one crop's blocks).
template <int kC, int kSimd, bool kNormalOutput = false, typename in_t, typename out_t>
inline void forward_items(const MultiCropParams<in_t, out_t>& p, int64_t threads, std::atomic<int64_t>& next) {
  const int64_t crops = p.B * p.N;
  const int64_t whole = std::max<int64_t>(crops - threads, 0);
  const int64_t blocks = ceil_div(p.out_h, kRowsPerItem);
  const int64_t items = whole + (crops - whole) * blocks;
  ColumnTable table;
  const int64_t vs = ceil_div<int64_t>(p.W, 16) * 16 + 2 * simd_block(kSimd);
  AlignedVector<float> v(static_cast<size_t>(2 * kC * vs));
  AlignedVector<float> h(static_cast<size_t>(p.out_w));
  int64_t table_crop = -1;
  for (int64_t item = next++; item < items; item = next++) {
    const int64_t bn = item < whole ? item : whole + (item - whole) / blocks;
    const int64_t y0 = item < whole ? 0 : ((item - whole) % blocks) * kRowsPerItem;
    const int64_t y1 = item < whole ? p.out_h : std::min(p.out_h, y0 + kRowsPerItem);
    if (bn != table_crop) {
      const Box box = crop_source_box(p.boxes, bn, p.H, p.W);
      table.fill(box.width, crop_flipped(p, bn), p.out_w);
      table.fill_blocks(p.out_w, simd_block(kSimd));
      table_crop = bn;
    }
    crop_rows<kC, kSimd, kNormalOutput>(p, bn, y0, y1, table, v.data(), vs, h.data());
  }
}

#ifdef LMCL_HAS_AVX2_CLONE
template <int kC, typename in_t, typename out_t>
LMCL_AVX2_CLONE void forward_items_avx2(const MultiCropParams<in_t, out_t>& p, int64_t threads,
                                        std::atomic<int64_t>& next) {
  forward_items<kC, kSimdAvx2>(p, threads, next);
}

template <int kC, typename in_t, typename out_t>
LMCL_AVX512_CLONE void forward_items_avx512(const MultiCropParams<in_t, out_t>& p, int64_t threads,
                                            std::atomic<int64_t>& next) {
  forward_items<kC, kSimdAvx512>(p, threads, next);
}

template <int kC, bool kNormalOutput, typename in_t, typename out_t>
LMCL_AVX512BF16_CLONE void forward_items_avx512bf16(const MultiCropParams<in_t, out_t>& p, int64_t threads,
                                                    std::atomic<int64_t>& next) {
  forward_items<kC, kSimdAvx512Bf16, kNormalOutput>(p, threads, next);
}
#endif

// Backward of crop bn, channel c, into its grad-image plane: per output row, the adjoint of the column
// step into a row of the crop's width (t), then the adjoint of the row step adds t to the two source rows.
template <typename g_t>
inline void crop_plane_backward(const MultiCropBackwardParams<g_t>& p, int64_t bn, int64_t c, ColumnTable& table,
                                float* t) {
  const Box box = crop_source_box(p.boxes, bn, p.H, p.W);
  table.fill(box.width, crop_flipped(p, bn), p.out_w);
  // The gradient is read through its strides (channels-last crops hand back an NHWC-ordered gradient).
  const g_t* go = p.grad + (bn / p.N) * p.g_sb + (bn % p.N) * p.g_sn + c * p.g_sc;
  float* base = p.grad_images + ((bn / p.N) * p.C + c) * p.H * p.W + box.left + table.lo;
  const float scale = p.scale[c];
  for (int64_t y = 0; y < p.out_h; ++y) {
    std::fill(t, t + table.cols, 0.0f);
    for (int64_t x = 0; x < p.out_w; ++x) {
      const float g = static_cast<float>(go[y * p.g_sy + x * p.g_sx]) * scale;
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
    std::atomic<int64_t> next{0};
#ifdef LMCL_HAS_AVX2_CLONE
    const int simd = cpu_simd_level();
    const bool normal_output = normal_output_only(p);
#endif
    const int64_t threads = at::get_num_threads();
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
#ifdef LMCL_HAS_AVX2_CLONE
      if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
        if (simd == kSimdAvx512Bf16) {
          if (normal_output) {
            forward_items_avx512bf16<kC, true>(p, threads, next);
          } else {
            forward_items_avx512bf16<kC, false>(p, threads, next);
          }
          return;
        }
      }
      if (simd >= kSimdAvx512) {
        forward_items_avx512<kC>(p, threads, next);
        return;
      }
      if (simd == kSimdAvx2) {
        forward_items_avx2<kC>(p, threads, next);
        return;
      }
#endif
      forward_items<kC, kSimdBaseline>(p, threads, next);
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
                          const std::optional<at::Tensor>& flip, at::ScalarType out_dtype,
                          std::optional<at::MemoryFormat> memory_format) {
  check_multi_crop_args(images, boxes, size, mean, std, flip, out_dtype, memory_format);
  return multi_crop_forward(MultiCropCpu{}, images, boxes, size, mean, std, flip, out_dtype, memory_format);
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
