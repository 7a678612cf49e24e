// Host/device fast math for the exp-bound tile loops: float exp polynomial, bit casts, selects, SIMD pragmas.
// The selects and the exp keep CPU loops vectorisable; log/sqrt overloads per compute type; softplus, sigmoid.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/common.h"

// Vectorised reductions on the CPU (the build has -fopenmp); a no-op for nvcc and plain builds. The
// reduction order is fixed by the compiled code, so results stay bit-reproducible run to run.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define LMCL_PRAGMA(x) _Pragma(#x)
#define LMCL_SIMD_MAX(var) LMCL_PRAGMA(omp simd reduction(max : var))
#define LMCL_SIMD_SUM(var) LMCL_PRAGMA(omp simd reduction(+ : var))
#define LMCL_SIMD LMCL_PRAGMA(omp simd)
#else
#define LMCL_SIMD_MAX(var)
#define LMCL_SIMD_SUM(var)
#define LMCL_SIMD
#endif

namespace lmcl {

template <typename acc_t>
LMCL_HD inline acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

LMCL_HD inline float float_from_bits(int32_t bits) {
#ifdef __CUDA_ARCH__
  return __int_as_float(bits);
#else
  return __builtin_bit_cast(float, bits);  // a register move: unlike memcpy, it keeps loops vectorisable
#endif
}

LMCL_HD inline int32_t bits_of_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_int(f);
#else
  return __builtin_bit_cast(int32_t, f);
#endif
}

// cond ? a : b for floats through integer masks. Under -ftrapping-math (the default) GCC does not
// if-convert a floating-point ?: inside the loops below, and one such branch keeps a whole loop scalar.
LMCL_HD inline float select_float(bool cond, float a, float b) {
  const int32_t m = -static_cast<int32_t>(cond);
  return float_from_bits((bits_of_float(a) & m) | (bits_of_float(b) & ~m));
}

// exp(x) for float as a branch-free polynomial (Cephes expf: Cody-Waite reduction, degree-5
// polynomial, relative error ~1e-7), so the CPU tile loops vectorise; -inf and very negative
// arguments give exactly 0 (masked pairs contribute nothing). double uses the library exp.
LMCL_HD inline float exp_acc(float x) {
  const float lo = -87.0f;
  const float hi = 88.0f;
  const float xh = select_float(x > hi, hi, x);
  const float xc = select_float(xh < lo, lo, xh);
  // round(x * log2(e)) by the 1.5 * 2^23 trick (exact without -ffast-math for |n| < 2^22).
  const float magic = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + magic) - magic;
  const float r = (xc - n * 0.693359375f) - n * (-2.12194440e-4f);
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const float scale = float_from_bits((static_cast<int32_t>(n) + 127) << 23);
  return select_float(x >= lo, y * scale, 0.0f);
}

LMCL_HD inline double exp_acc(double x) {
  return ::exp(x);
}

LMCL_HD inline float log_acc(float x) {
  return ::logf(x);
}

LMCL_HD inline double log_acc(double x) {
  return ::log(x);
}

LMCL_HD inline float log1p_acc(float x) {
  return ::log1pf(x);
}

LMCL_HD inline double log1p_acc(double x) {
  return ::log1p(x);
}

LMCL_HD inline float sqrt_acc(float x) {
  return ::sqrtf(x);
}

LMCL_HD inline double sqrt_acc(double x) {
  return ::sqrt(x);
}

// log(1 + exp(x)) without overflow.
template <typename acc_t>
LMCL_HD inline acc_t softplus(acc_t x) {
  return x > acc_t(0) ? x + log1p_acc(exp_acc(-x)) : log1p_acc(exp_acc(x));
}

// 1 / (1 + exp(-x)) without overflow.
template <typename acc_t>
LMCL_HD inline acc_t sigmoid(acc_t x) {
  if (x >= acc_t(0)) {
    return acc_t(1) / (acc_t(1) + exp_acc(-x));
  }
  const acc_t e = exp_acc(x);
  return e / (acc_t(1) + e);
}

}  // namespace lmcl
