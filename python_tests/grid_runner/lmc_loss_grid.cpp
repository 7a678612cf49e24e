// Grid-runner ops (torch.ops.lmcl_grid) for lmc_loss, run with HostGridLauncher.
// The CUDA entry's tile loop and passes (csrc/host/lmc_loss.h,
// GridPasses) with HostGridLauncher in place of CudaGridLauncher. The test ops take the key tile width
// and the grid size so the tests can force several key tiles and grid-stride wrap-around; every launch also
// checks that the tile GEMMs around it run without TF32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "grid_runner.h"
#include "host/lmc_loss.h"

namespace lmcl {
namespace {

// HostGridLauncher that checks at every launch of the tile loop that its GEMMs run without TF32
// (lmc_loss_forward/backward hold at::NoTF32Guard for the whole loop, CPU and CUDA alike).
struct NoTF32CheckingLauncher : HostGridLauncher {
  static void check() {
    TORCH_CHECK(at::NoTF32Guard::should_disable_tf32(), "lmc_loss: a pass ran while TF32 was allowed for the GEMMs");
  }
  template <typename Body>
  void operator()(Body body, const typename Body::Params& params, int64_t items) const {
    check();
    HostGridLauncher::operator()(body, params, items);
  }
  template <typename Body>
  void rows(Body body, const typename Body::Params& params) const {
    check();
    HostGridLauncher::rows(body, params);
  }
};

lmc::GridPasses<NoTF32CheckingLauncher> make_passes(int64_t threads, int64_t max_blocks) {
  return {NoTF32CheckingLauncher{HostGridLauncher{GridShape{threads, max_blocks}}}};
}

// Whether TF32 is switched off for this thread now (false outside lmc_loss: its guard has ended).
bool tf32_disabled() {
  return at::NoTF32Guard::should_disable_tf32();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lmc_loss_grid(const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
              const at::Tensor& teacher_keys, int64_t key_offset, double tau, double intra_weight,
              double manifold_weight, int64_t key_tile, int64_t threads, int64_t max_blocks, bool unit_grads) {
  auto passes = make_passes(threads, max_blocks);
  // As the CUDA entry: anchor_idx checked in a kernel (a ValueError here).
  const lmc::LmcOptions o{key_offset, tau, intra_weight, manifold_weight, key_tile, /*check_anchor_idx_in_kernel=*/true};
  return lmc::lmc_loss_forward(passes, z, anchor_idx, z_keys, teacher_keys, o, {unit_grads, unit_grads, unit_grads});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lmc_loss_backward_grid(
    const at::Tensor& grad, const at::Tensor& z, const at::Tensor& anchor_idx, const at::Tensor& z_keys,
    const at::Tensor& teacher_keys, const at::Tensor& cluster_lse, const at::Tensor& cluster_logits,
    const at::Tensor& manifold_lse, int64_t key_offset, double tau, double intra_weight, double manifold_weight,
    int64_t key_tile, int64_t threads, int64_t max_blocks) {
  auto passes = make_passes(threads, max_blocks);
  const lmc::LmcOptions o{key_offset, tau, intra_weight, manifold_weight, key_tile};
  return lmc::lmc_loss_backward(passes, grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse, cluster_logits,
                                manifold_lse, o, {true, true, true});
}

// One launch of the backward tile body alone, on a given similarity tile (empty tiles included).
at::Tensor lmc_grad_tile_grid(const at::Tensor& s, const at::Tensor& lse, int64_t col0, int64_t N,
                              int64_t key_offset, double tau, double intra_weight, double scale, int64_t threads,
                              int64_t max_blocks) {
  at::Tensor out = s.to(at::kFloat).contiguous().clone();
  at::Tensor lse_c = lse.to(at::kFloat).contiguous();
  const lmc::LmcOptions o{key_offset, tau, intra_weight, 1.0, 0};
  lmc::GridPasses<HostGridLauncher> passes{HostGridLauncher{GridShape{threads, max_blocks}}};
  passes.grad_tile<float>({lmc::tile_params<float>(out, col0, N, o, nullptr), lse_c.data_ptr<float>(), nullptr,
                           static_cast<float>(scale), nullptr});
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmcl_grid, m) {
  m.def(
      "lmc_loss(Tensor z, Tensor anchor_idx, Tensor z_keys, Tensor teacher_keys, int key_offset, float tau, "
      "float intra_weight, float manifold_weight, int key_tile, int threads, int max_blocks, "
      "bool unit_grads=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lmc_loss_backward(Tensor grad, Tensor z, Tensor anchor_idx, Tensor z_keys, Tensor teacher_keys, "
      "Tensor cluster_lse, Tensor cluster_logits, Tensor manifold_lse, int key_offset, float tau, "
      "float intra_weight, float manifold_weight, int key_tile, int threads, int max_blocks) -> "
      "(Tensor, Tensor, Tensor)");
  m.def(
      "lmc_grad_tile(Tensor s, Tensor lse, int col0, int N, int key_offset, float tau, float intra_weight, "
      "float scale, int threads, int max_blocks) -> Tensor");
  m.def("tf32_disabled() -> bool", &tf32_disabled);  // no tensor to dispatch on: one kernel for all
}

TORCH_LIBRARY_IMPL(lmcl_grid, CPU, m) {
  m.impl("lmc_loss", &lmc_loss_grid);
  m.impl("lmc_loss_backward", &lmc_loss_backward_grid);
  m.impl("lmc_grad_tile", &lmc_grad_tile_grid);
}

}  // namespace lmcl
