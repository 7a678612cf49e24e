// crop_saliency on CUDA: the float64 table from two ATen scans, one look-up kernel over B * N boxes
// (which also flags invalid boxes), one device->host read for the box check. Backward: one corner
// kernel, then index_put_ accumulation and two float64 scans.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/crop_saliency_launch.h"
#include "cuda/launch.cuh"
#include "ops/crop_saliency.h"

namespace lmcl {

namespace {

at::Tensor crop_saliency_cuda(const at::Tensor& saliency, const at::Tensor& boxes) {
  check_crop_saliency_args(saliency, boxes);
  const c10::cuda::CUDAGuard guard(saliency.device());
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2), N = boxes.size(1);
  at::Tensor out = at::empty({B, N}, saliency.options());
  if (B * N == 0) {
    return out;
  }
  const at::Tensor sat = crop_saliency_table(saliency);
  at::Tensor invalid = at::empty({B, N}, saliency.options().dtype(at::kByte));
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_cuda", [&] {
    launch_grid<CropSaliencyLookupBody<index_t>>(crop_saliency_lookup_params<index_t>(sat, boxes, out, invalid),
                                                 crop_saliency_box_config(B * N));
  });
  check_crop_saliency_flags(invalid, boxes, H, W);
  return out;
}

at::Tensor crop_saliency_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W) {
  check_crop_saliency_backward_args(grad, boxes, H, W);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t B = boxes.size(0), N = boxes.size(1);
  if (B * H * W == 0) {
    return at::empty({B, H, W}, grad.options());
  }
  at::Tensor offset = at::empty({B * N * 4}, grad.options().dtype(at::kLong));
  at::Tensor value = at::empty({B * N * 4}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_backward_cuda", [&] {
    launch_grid<CropSaliencyCornersBody<index_t>>(
        crop_saliency_corners_params<index_t>(grad, boxes, offset, value, H, W), crop_saliency_box_config(B * N));
  });
  return crop_saliency_adjoint(offset, value, B, H, W);
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("crop_saliency", &lmcl::crop_saliency_cuda);
  m.impl("_crop_saliency_backward", &lmcl::crop_saliency_backward_cuda);
}
