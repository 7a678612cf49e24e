// CUDA kernels of lmcl::multi_crop and lmcl::_multi_crop_backward: argument checks, device guard, then the
// host code in multi_crop_launch.h (one box read-back, Params) launching the kernels/multi_crop.h bodies on
// the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "cuda/multi_crop_launch.h"

namespace lmcl {

namespace {

constexpr int64_t kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

struct CudaLauncher {
  template <typename Body>
  void operator()(Body, const typename Body::Params& params, LaunchConfig config) const {
    launch_grid<Body>(params, config);
  }
};

at::Tensor multi_crop_cuda(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                           std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                           const std::optional<at::Tensor>& flip, at::ScalarType out_dtype) {
  check_multi_crop_args(images, boxes, size, mean, std, flip, out_dtype);
  const c10::cuda::CUDAGuard guard(images.device());
  return multi_crop_grid(images, boxes, size, mean, std, flip, out_dtype, CudaLauncher{}, kThreads, kMaxBlocks);
}

at::Tensor multi_crop_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes,
                                    std::optional<at::ArrayRef<double>> std, const std::optional<at::Tensor>& flip,
                                    int64_t height, int64_t width) {
  check_multi_crop_backward_args(grad, boxes, std, flip, height, width);
  const c10::cuda::CUDAGuard guard(grad.device());
  // The scatter uses float atomics: the summation order, hence the last bits, vary between runs.
  at::globalContext().alertNotDeterministic("lmcl::_multi_crop_backward (CUDA)");
  return multi_crop_backward_grid(grad, boxes, std, flip, height, width, CudaLauncher{}, kThreads, kMaxBlocks);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("multi_crop", &multi_crop_cuda);
  m.impl("_multi_crop_backward", &multi_crop_backward_cuda);
}

}  // namespace lmcl
