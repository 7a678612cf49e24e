// CPU stand-ins of the crop_saliency and select_anchor CUDA launchers: the same launch headers
// (tensors -> Params, configs, ATen steps, flag checks) and kernel Bodies, run by run_grid_on_host.
// `threads` and `max_blocks` let the tests force the grid-stride loops to wrap around. The argument
// checks live in the library (not linked here); the tests pass valid metadata.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/crop_saliency_launch.h"
#include "cuda/select_anchor_launch.h"
#include "grid_runner.h"

namespace {

// Returns (means, invalid flags); with check=true also runs the CUDA op's box check.
std::tuple<at::Tensor, at::Tensor> crop_saliency_grid(const at::Tensor& saliency, const at::Tensor& boxes,
                                                      int64_t threads, int64_t max_blocks, bool check) {
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2), N = boxes.size(1);
  at::Tensor out = at::empty({B, N}, saliency.options());
  at::Tensor invalid = at::empty({B, N}, saliency.options().dtype(at::kByte));
  if (B * N == 0) {
    return {out, invalid};
  }
  const at::Tensor sat = lmcl::crop_saliency_table(saliency);
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl_grid::crop_saliency", [&] {
    lmcl::run_grid_on_host<lmcl::CropSaliencyLookupBody<index_t>>(
        lmcl::crop_saliency_lookup_params<index_t>(sat, boxes, out, invalid),
        lmcl::crop_saliency_box_config(B * N, threads, max_blocks));
  });
  if (check) {
    lmcl::check_crop_saliency_flags(invalid, boxes, H, W);
  }
  return {out, invalid};
}

at::Tensor crop_saliency_backward_grid(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W,
                                       int64_t threads, int64_t max_blocks) {
  const int64_t B = boxes.size(0), N = boxes.size(1);
  if (B * H * W == 0) {
    return at::empty({B, H, W}, grad.options());
  }
  at::Tensor offset = at::empty({B * N * 4}, grad.options().dtype(at::kLong));
  at::Tensor value = at::empty({B * N * 4}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl_grid::crop_saliency_backward", [&] {
    lmcl::run_grid_on_host<lmcl::CropSaliencyCornersBody<index_t>>(
        lmcl::crop_saliency_corners_params<index_t>(grad, boxes, offset, value, H, W),
        lmcl::crop_saliency_box_config(B * N, threads, max_blocks));
  });
  return lmcl::crop_saliency_adjoint(offset, value, B, H, W);
}

// Returns the per-row result (-1 for a NaN row); with check=true also runs the CUDA op's NaN check.
at::Tensor select_anchor_grid(const at::Tensor& scores, int64_t threads, int64_t max_blocks, bool check) {
  const int64_t B = scores.size(0);
  at::Tensor out = at::empty({B}, scores.options().dtype(at::kLong));
  if (B == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "lmcl_grid::select_anchor", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    lmcl::run_grid_on_host<lmcl::SelectAnchorBody<scalar_t, acc_t>>(
        lmcl::select_anchor_params<scalar_t, acc_t>(scores, out), lmcl::select_anchor_config(B, threads, max_blocks));
  });
  if (check) {
    lmcl::check_select_anchor_flags(out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmcl_grid, m) {
  m.def("crop_saliency(Tensor saliency, Tensor boxes, int threads, int max_blocks, bool check) -> (Tensor, Tensor)");
  m.def("crop_saliency_backward(Tensor grad, Tensor boxes, int H, int W, int threads, int max_blocks) -> Tensor");
  m.def("select_anchor(Tensor scores, int threads, int max_blocks, bool check) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmcl_grid, CPU, m) {
  m.impl("crop_saliency", &crop_saliency_grid);
  m.impl("crop_saliency_backward", &crop_saliency_backward_grid);
  m.impl("select_anchor", &select_anchor_grid);
}
