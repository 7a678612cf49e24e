// Run-time choice between the baseline x86-64 build (SSE2, 4 floats), an AVX2 + FMA + F16C clone of the
// same loops (8 floats) and, for multi_crop, AVX-512 (F, BW, VL, VBMI; + BF16, DQ) clones (16 floats); flatten
// inlines the shared kernels/ functions into each clone. No clone contracts into FMAs (setup.py): multi_crop
// gives the same bits on every path; lmc_loss's element-wise passes differ from the baseline build in the last
// bits (gradients about 1e-10 apart at M = 512, measured at stop 15). One machine always takes the same path.
#pragma once

namespace lmcl {
// kSimdAvx512Bf16: AVX-512 plus BF16 and DQ (VCVTNEPS2BF16 for bfloat16 stores).
enum SimdLevel : int { kSimdBaseline = 0, kSimdAvx2 = 1, kSimdAvx512 = 2, kSimdAvx512Bf16 = 3 };
}  // namespace lmcl

#if defined(__x86_64__) && defined(__GNUC__)
#define LMCL_HAS_AVX2_CLONE 1
#define LMCL_AVX2_CLONE __attribute__((target("avx2,fma,f16c"), flatten))
#define LMCL_AVX512_CLONE \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c"), flatten))
#define LMCL_AVX512BF16_CLONE \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16,avx512dq,avx2,fma,f16c"), flatten))

#include <immintrin.h>

#include <cstdlib>
#include <cstring>

namespace lmcl {

// The widest clone this CPU runs, capped by the environment variable LMCL_CPU_SIMD (baseline, avx2,
// avx512 or avx512bf16; read at every call, so a test can run each path on one machine).
inline int cpu_simd_level() {
  static const int detected = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))) {
      return int(kSimdBaseline);
    }
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi");
    if (!avx512) {
      return int(kSimdAvx2);
    }
    return int(__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512dq") ? kSimdAvx512Bf16
                                                                                           : kSimdAvx512);
  }();
  const char* cap = std::getenv("LMCL_CPU_SIMD");
  if (cap == nullptr) {
    return detected;
  }
  const int limit = std::strcmp(cap, "baseline") == 0 ? kSimdBaseline
                    : std::strcmp(cap, "avx2") == 0   ? kSimdAvx2
                    : std::strcmp(cap, "avx512") == 0 ? kSimdAvx512
                                                      : kSimdAvx512Bf16;
  return detected < limit ? detected : limit;
}

inline bool cpu_has_avx2() { return cpu_simd_level() >= kSimdAvx2; }

}  // namespace lmcl
#endif
