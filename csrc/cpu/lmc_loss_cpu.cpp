// lmc_loss and its backward on the CPU: CpuPasses (at::parallel_for) under the tile loop of host/lmc_loss.h.
// GEMMs by at::mm (MKL/oneDNN); every element-wise pass runs by at::parallel_for over query rows. Each chunk
// of rows writes only its own rows, so there are no atomics and results are bit-reproducible run to run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "host/launch.h"
#include "host/lmc_loss.h"

namespace lmcl {
namespace {

// The element-wise passes are exp-bound. The library is built for baseline x86-64 (SSE2, 4 floats), so
// on CPUs with AVX2 + FMA the same loops are also compiled 8 floats wide (flatten inlines the shared
// row functions into the clone) and picked at run time. One machine always takes the same path, so
// results stay bit-reproducible there.
#if defined(__x86_64__) && defined(__GNUC__)
#define LMCL_HAS_AVX2_CLONE 1
#define LMCL_AVX2_CLONE __attribute__((target("avx2,fma"), flatten))
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <class Body>
void items_baseline(const typename Body::Params& p, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    Body::item(p, i);
  }
}

#ifdef LMCL_HAS_AVX2_CLONE
template <class Body>
LMCL_AVX2_CLONE void items_avx2(const typename Body::Params& p, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    Body::item(p, i);
  }
}
#endif

struct CpuPasses {
  using Guard = NoDeviceGuard;

  // ~32k scalar operations per chunk (ATen's GRAIN_SIZE), cost = operations per item.
  static int64_t grain(int64_t cost) {
    return std::max<int64_t>(1, 32768 / std::max<int64_t>(cost, 1));
  }

  template <class Body>
  void for_each(const typename Body::Params& p, int64_t items, int64_t cost) {
    at::parallel_for(0, items, grain(cost), [&](int64_t begin, int64_t end) {
#ifdef LMCL_HAS_AVX2_CLONE
      if (cpu_has_avx2()) {
        items_avx2<Body>(p, begin, end);
        return;
      }
#endif
      items_baseline<Body>(p, begin, end);
    });
  }

  // The backward tile pass a row at a time (GradTileBody::row, the vectorisable form of its per-pair math).
  template <typename acc_t>
  struct GradTileRows {
    using Params = typename lmc::GradTileBody<acc_t>::Params;
    static void item(const Params& p, int64_t r) { lmc::GradTileBody<acc_t>::row(p, r); }
  };

  template <typename acc_t>
  void grad_tile(const typename lmc::GradTileBody<acc_t>::Params& p) {
    for_each<GradTileRows<acc_t>>(p, p.t.rows, 8 * p.t.cols);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("lmc_loss", &lmc::lmc_loss_entry<CpuPasses>);
  m.impl("_lmc_loss_backward", &lmc::lmc_loss_backward_entry<CpuPasses>);
}

}  // namespace lmcl
