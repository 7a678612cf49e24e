// multi_crop and its backward on CUDA: checks, device guard, then host/multi_crop.h on the grid backend.
// One box-check launch (device-side asserts), then one launch of the kernels/multi_crop.h bodies, on the
// current stream: nothing waits for the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "host/multi_crop.h"
#include "ops/multi_crop.h"

namespace lmcl {

namespace {

at::Tensor multi_crop_cuda(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                           std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                           const std::optional<at::Tensor>& flip, at::ScalarType out_dtype,
                           std::optional<at::MemoryFormat> memory_format) {
  check_multi_crop_args(images, boxes, size, mean, std, flip, out_dtype, memory_format);
  const c10::cuda::CUDAGuard guard(images.device());
  return multi_crop_forward(MultiCropGrid<CudaGridLauncher>{}, images, boxes, size, mean, std, flip, out_dtype,
                            memory_format);
}

at::Tensor multi_crop_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes,
                                   std::optional<at::ArrayRef<double>> std, const std::optional<at::Tensor>& flip,
                                   int64_t height, int64_t width) {
  check_multi_crop_backward_args(grad, boxes, std, flip, height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  // The scatter uses float atomics: the summation order, hence the last bits, vary between runs.
  at::globalContext().alertNotDeterministic("lmcl::_multi_crop_backward (CUDA)");
  return multi_crop_backward(MultiCropGrid<CudaGridLauncher>{}, grad, boxes, std, flip, height, width);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("multi_crop", &multi_crop_cuda);
  m.impl("_multi_crop_backward", &multi_crop_backward_cuda);
}

}  // namespace lmcl
