// lmc_loss and its backward on the CPU: CpuPasses (at::parallel_for) under the tile loop of host/lmc_loss.h.
// GEMMs by at::mm (MKL/oneDNN); every element-wise pass runs by at::parallel_for over query rows. Each chunk
// of rows writes only its own rows, so there are no atomics and results are bit-reproducible run to run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "cpu/simd.h"
#include "host/launch.h"
#include "host/lmc_loss.h"

namespace lmcl {
namespace {

// The element-wise passes are exp-bound: cpu/simd.h picks the AVX2 clone of them where the CPU has it.

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

  // A pass of fewer operations than this runs on the calling thread: at M = 512 a step has ~a dozen
  // sub-millisecond passes, and each parallel region waits for its slowest thread, which on a busy
  // machine may be descheduled for a whole time slice.
  static constexpr int64_t kSerialWork = int64_t(1) << 22;

  // ~32k scalar operations per chunk (ATen's GRAIN_SIZE), cost = operations per item; one chunk when
  // the whole pass is below kSerialWork.
  static int64_t grain(int64_t items, int64_t cost) {
    cost = std::max<int64_t>(cost, 1);
    return items * cost < kSerialWork ? std::max<int64_t>(items, 1) : std::max<int64_t>(1, 32768 / cost);
  }

  // Items [begin, end) on the calling thread.
  template <class Body>
  static void serial(const typename Body::Params& p, int64_t begin, int64_t end) {
#ifdef LMCL_HAS_AVX2_CLONE
    if (cpu_has_avx2()) {
      items_avx2<Body>(p, begin, end);
      return;
    }
#endif
    items_baseline<Body>(p, begin, end);
  }

  template <class Body>
  void for_each(const typename Body::Params& p, int64_t items, int64_t cost) {
    at::parallel_for(0, items, grain(items, cost),
                     [&](int64_t begin, int64_t end) { serial<Body>(p, begin, end); });
  }

  // Forwards run as one parallel region over blocks of images (host/lmc_loss.h, lmc_loss_forward_row_strips):
  // a block per thread, so each thread runs the GEMMs of its own rows.
  static constexpr bool kRowBlocks = true;

  static int64_t block_count(int64_t images) {
    return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), images));
  }

  // fn(block, first image, end image) for `blocks` contiguous blocks of `images`, one task per block.
  template <class Fn>
  void blocks(int64_t images, int64_t blocks, const Fn& fn) {
    at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        fn(k, k * images / blocks, (k + 1) * images / blocks);
      }
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
