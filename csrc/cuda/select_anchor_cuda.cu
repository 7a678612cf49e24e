// select_anchor on CUDA: checks, device guard, then host/select_anchor.h on the GPU.
// One thread per row (N, the crops per image, is small); a NaN is a device-side assert (no host read).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "host/select_anchor.h"
#include "ops/select_anchor.h"

namespace lmcl {

namespace {

at::Tensor select_anchor_cuda(const at::Tensor& scores) {
  check_select_anchor_args(scores);
  const c10::cuda::CUDAGuard guard(scores.device());
  return select_anchor_grid(scores, CudaGridLauncher{}, /*check=*/true);
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("select_anchor", &lmcl::select_anchor_cuda);
}
