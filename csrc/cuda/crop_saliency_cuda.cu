// crop_saliency and its backward on CUDA: checks, device guard, then host/crop_saliency.h on the GPU.
// The float64 table of the finite pixels and the integer table of the NaN/+Inf/-Inf counts, each from two ATen
// scans, one look-up kernel over B * N boxes (which also checks them with a device-side assert: no
// device->host read). Backward: one corner kernel, then index_put_ accumulation
// and two float64 scans.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "host/crop_saliency.h"
#include "ops/crop_saliency.h"

namespace lmcl {

namespace {

at::Tensor crop_saliency_cuda(const at::Tensor& saliency, const at::Tensor& boxes) {
  check_crop_saliency_args(saliency, boxes);
  const c10::cuda::CUDAGuard guard(saliency.device());
  return std::get<0>(crop_saliency_grid(saliency, boxes, CudaGridLauncher{}, /*check=*/true));
}

at::Tensor crop_saliency_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W) {
  check_crop_saliency_backward_args(grad, boxes, H, W);
  const c10::cuda::CUDAGuard guard(grad.device());
  return crop_saliency_backward_grid(grad, boxes, H, W, CudaGridLauncher{});
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("crop_saliency", &lmcl::crop_saliency_cuda);
  m.impl("_crop_saliency_backward", &lmcl::crop_saliency_backward_cuda);
}
