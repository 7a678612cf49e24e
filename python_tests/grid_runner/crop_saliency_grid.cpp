// Grid-runner ops (torch.ops.lmcl_grid) for crop_saliency and select_anchor, run with HostGridLauncher.
// The CUDA entries' host code (csrc/host/<op>.h:
// table, Params, ATen steps, in-kernel checks) with HostGridLauncher in place of CudaGridLauncher. `threads`
// and `max_blocks` let the tests force the grid-stride loops to wrap around. The argument checks live in
// the library (not linked here); the tests pass valid metadata.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "grid_runner.h"
#include "host/crop_saliency.h"
#include "host/select_anchor.h"

namespace {

lmcl::HostGridLauncher launcher(int64_t threads, int64_t max_blocks) {
  return lmcl::HostGridLauncher{lmcl::GridShape{threads, max_blocks}};
}

// Returns (means, invalid flags); check=true runs the CUDA op's in-kernel box check (a ValueError here)
// and returns all-zero flags. wide_counts=true forces the int64 NaN/Inf counts (maps of 2^31 pixels or more).
std::tuple<at::Tensor, at::Tensor> crop_saliency_grid(const at::Tensor& saliency, const at::Tensor& boxes,
                                                      int64_t threads, int64_t max_blocks, bool check,
                                                      bool wide_counts) {
  auto [out, invalid] =
      lmcl::crop_saliency_grid(saliency, boxes, launcher(threads, max_blocks), check, wide_counts);
  if (!invalid.defined()) {
    invalid = at::zeros(out.sizes(), out.options().dtype(at::kByte));
  }
  return {out, invalid};
}

at::Tensor crop_saliency_backward_grid(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W,
                                       int64_t threads, int64_t max_blocks) {
  return lmcl::crop_saliency_backward_grid(grad, boxes, H, W, launcher(threads, max_blocks));
}

// Returns the per-row result (-1 for a NaN row); check=true runs the CUDA op's in-kernel NaN check (a
// ValueError here).
at::Tensor select_anchor_grid(const at::Tensor& scores, int64_t threads, int64_t max_blocks, bool check) {
  return lmcl::select_anchor_grid(scores, launcher(threads, max_blocks), check);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmcl_grid, m) {
  m.def("crop_saliency(Tensor saliency, Tensor boxes, int threads, int max_blocks, bool check, "
        "bool wide_counts=False) -> (Tensor, Tensor)");
  m.def("crop_saliency_backward(Tensor grad, Tensor boxes, int H, int W, int threads, int max_blocks) -> Tensor");
  m.def("select_anchor(Tensor scores, int threads, int max_blocks, bool check) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmcl_grid, CPU, m) {
  m.impl("crop_saliency", &crop_saliency_grid);
  m.impl("crop_saliency_backward", &crop_saliency_backward_grid);
  m.impl("select_anchor", &select_anchor_grid);
}
