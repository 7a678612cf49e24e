// select_anchor on the CPU: rows in parallel, then a serial pass that raises on a NaN row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "host/select_anchor.h"
#include "kernels/select_anchor.h"
#include "ops/select_anchor.h"

namespace lmcl {

namespace {

at::Tensor select_anchor_cpu(const at::Tensor& scores) {
  check_select_anchor_args(scores);
  const int64_t B = scores.size(0), N = scores.size(1);
  at::Tensor out = at::empty({B}, scores.options().dtype(at::kLong));
  if (B == 0) {
    return out;
  }
  int64_t* out_ptr = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "lmcl::select_anchor_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ptr = scores.data_ptr<scalar_t>();
    const int64_t s_b = scores.stride(0), s_n = scores.stride(1);
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / N), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        out_ptr[b] = row_argmax_or_nan<scalar_t, acc_t>(ptr + b * s_b, s_n, N);
      }
    });
  });
  for (int64_t b = 0; b < B; ++b) {
    if (out_ptr[b] < 0) {
      raise_select_anchor_nan(b);
    }
  }
  return out;
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("select_anchor", &lmcl::select_anchor_cpu);
}
