// lmc_loss on CUDA: the tile loop of ops/lmc_loss_tiling.h (GEMMs by at::mm, i.e. cuBLAS, in full
// float32: torch's default has TF32 off) with the element-wise passes launched over the bodies of
// kernels/lmc_loss.h on the current stream. No atomics: every thread owns its outputs, so results
// are deterministic.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>

#include "cuda/launch.cuh"
#include "cuda/lmc_loss_launch.h"
#include "ops/lmc_loss.h"
#include "ops/lmc_loss_tiling.h"

namespace lmcl {
namespace {

struct CudaLauncher {
  template <class Body>
  void run(const typename Body::Params& p, LaunchConfig config) const {
    launch_grid<Body>(p, config);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lmc_loss_cuda(
    const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys, const at::Tensor& teacher_keys,
    int64_t key_offset, double tau, double intra_weight, double manifold_weight, int64_t key_tile) {
  check_lmc_loss_args(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile,
                      /*check_anchor_values=*/true);
  const c10::cuda::CUDAGuard guard(z.device());
  lmc::GridPasses<CudaLauncher> passes;
  const lmc::LmcOptions o{key_offset, tau, intra_weight, manifold_weight, key_tile};
  return lmc::lmc_loss_forward(passes, z, anchor_idx, z_keys, teacher_keys, o);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lmc_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
    const at::Tensor& teacher_keys, const at::Tensor& cluster_lse, const at::Tensor& cluster_logits,
    const at::Tensor& manifold_lse, int64_t key_offset, double tau, double intra_weight, double manifold_weight,
    bool need_grad_z, bool need_grad_z_keys, bool need_grad_teacher_keys, int64_t key_tile) {
  const std::array<bool, 3> output_mask{need_grad_z, need_grad_z_keys, need_grad_teacher_keys};
  check_lmc_loss_args(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile,
                      /*check_anchor_values=*/false);
  check_lmc_loss_backward_args(grad, z, cluster_lse, cluster_logits, manifold_lse);
  const c10::cuda::CUDAGuard guard(z.device());
  lmc::GridPasses<CudaLauncher> passes;
  const lmc::LmcOptions o{key_offset, tau, intra_weight, manifold_weight, key_tile};
  return lmc::lmc_loss_backward(passes, grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse, cluster_logits,
                                manifold_lse, o, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("lmc_loss", &lmc_loss_cuda);
  m.impl("_lmc_loss_backward", &lmc_loss_backward_cuda);
}

}  // namespace lmcl
