// lmc_loss on the CPU: the tile loop of ops/lmc_loss_tiling.h (GEMMs by at::mm, i.e. MKL/oneDNN)
// with every element-wise pass run by at::parallel_for over query rows. Each chunk of rows writes only
// its own rows, so there are no atomics and results are bit-reproducible run to run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "ops/lmc_loss.h"
#include "ops/lmc_loss_tiling.h"

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

template <typename acc_t>
void grad_rows_baseline(const typename lmc::GradTileBody<acc_t>::Params& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    lmc::GradTileBody<acc_t>::row(p, r);
  }
}

#ifdef LMCL_HAS_AVX2_CLONE
template <class Body>
LMCL_AVX2_CLONE void items_avx2(const typename Body::Params& p, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    Body::item(p, i);
  }
}

template <typename acc_t>
LMCL_AVX2_CLONE void grad_rows_avx2(const typename lmc::GradTileBody<acc_t>::Params& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    lmc::GradTileBody<acc_t>::row(p, r);
  }
}
#endif

struct CpuPasses {
  // Row-major similarity tiles: each chunk's row loops run over contiguous memory and vectorise.
  static constexpr bool kColumnMajorTiles = false;

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

  template <typename acc_t>
  void grad_tile(const typename lmc::GradTileBody<acc_t>::Params& p) {
    at::parallel_for(0, p.t.rows, grain(8 * p.t.cols), [&](int64_t begin, int64_t end) {
#ifdef LMCL_HAS_AVX2_CLONE
      if (cpu_has_avx2()) {
        grad_rows_avx2<acc_t>(p, begin, end);
        return;
      }
#endif
      grad_rows_baseline<acc_t>(p, begin, end);
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lmc_loss_cpu(
    const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys, const at::Tensor& teacher_keys,
    int64_t key_offset, double tau, double intra_weight, double manifold_weight, int64_t key_tile) {
  check_lmc_loss_args(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile,
                      /*check_anchor_values=*/true);
  CpuPasses passes;
  const lmc::LmcOptions o{key_offset, tau, intra_weight, manifold_weight, key_tile};
  return lmc::lmc_loss_forward(passes, z, anchor_idx, z_keys, teacher_keys, o);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lmc_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
    const at::Tensor& teacher_keys, const at::Tensor& cluster_lse, const at::Tensor& cluster_logits,
    const at::Tensor& manifold_lse, int64_t key_offset, double tau, double intra_weight, double manifold_weight,
    bool need_grad_z, bool need_grad_z_keys, bool need_grad_teacher_keys, int64_t key_tile) {
  const std::array<bool, 3> output_mask{need_grad_z, need_grad_z_keys, need_grad_teacher_keys};
  check_lmc_loss_args(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile,
                      /*check_anchor_values=*/false);
  check_lmc_loss_backward_args(grad, z, cluster_lse, cluster_logits, manifold_lse);
  CpuPasses passes;
  const lmc::LmcOptions o{key_offset, tau, intra_weight, manifold_weight, key_tile};
  return lmc::lmc_loss_backward(passes, grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse, cluster_logits,
                                manifold_lse, o, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("lmc_loss", &lmc_loss_cpu);
  m.impl("_lmc_loss_backward", &lmc_loss_backward_cpu);
}

}  // namespace lmcl
