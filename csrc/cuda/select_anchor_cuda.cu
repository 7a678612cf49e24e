// select_anchor on CUDA: one thread per row (N, the crops per image, is small), then one
// device->host read for the NaN check.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "cuda/select_anchor_launch.h"
#include "ops/select_anchor.h"

namespace lmcl {

namespace {

at::Tensor select_anchor_cuda(const at::Tensor& scores) {
  check_select_anchor_args(scores);
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t B = scores.size(0);
  at::Tensor out = at::empty({B}, scores.options().dtype(at::kLong));
  if (B == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "lmcl::select_anchor_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_grid<SelectAnchorBody<scalar_t, acc_t>>(select_anchor_params<scalar_t, acc_t>(scores, out),
                                                   select_anchor_config(B));
  });
  check_select_anchor_flags(out);
  return out;
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CUDA, m) {
  m.impl("select_anchor", &lmcl::select_anchor_cuda);
}
