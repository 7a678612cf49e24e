// select_anchor on CUDA: one thread per row (N, the crops per image, is small), then one
// device->host read for the NaN check.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "cuda/select_anchor_launch.h"
#include "ops/select_anchor.h"

namespace lmcl {

namespace {

constexpr int64_t kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

at::Tensor select_anchor_cuda(const at::Tensor& scores) {
  check_select_anchor_args(scores);
  const c10::cuda::CUDAGuard guard(scores.device());
  return select_anchor_grid(scores, CudaGridLauncher{}, kThreads, kMaxBlocks, /*check=*/true);
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("select_anchor", &lmcl::select_anchor_cuda);
}
