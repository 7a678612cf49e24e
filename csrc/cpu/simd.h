// Run-time choice between the baseline x86-64 build (SSE2, 4 floats) and an AVX2 + FMA + F16C clone of the
// same loops (8 floats; flatten inlines the shared kernels/ functions into the clone). One machine always
// takes the same path, so results stay bit-reproducible there.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define LMCL_HAS_AVX2_CLONE 1
#define LMCL_AVX2_CLONE __attribute__((target("avx2,fma,f16c"), flatten))

namespace lmcl {

inline bool cpu_has_avx2() {
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
}

}  // namespace lmcl
#endif
