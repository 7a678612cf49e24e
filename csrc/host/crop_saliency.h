// crop_saliency host setup for the CUDA entry and the grid runner: table, Params, launches, box check.
// Plain C++ and ATen (no CUDA API), run by a launcher (csrc/host/launch.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "host/boxes.h"
#include "kernels/crop_saliency.h"

namespace lmcl {

// [B, H + 1, W + 1] float64 summed-area table of the finite pixels (NaN and Inf read as 0) with a zero first
// row and column: two ATen scans in float64 (along rows, then down columns).
inline at::Tensor crop_saliency_table(const at::Tensor& saliency) {
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2);
  at::Tensor sat = at::zeros({B, H + 1, W + 1}, saliency.options().dtype(at::kDouble));
  if (saliency.numel() > 0) {
    const at::Tensor finite = at::nan_to_num(saliency, 0.0, 0.0, 0.0);
    sat.narrow(1, 1, H).narrow(2, 1, W).copy_(at::cumsum(at::cumsum(finite, 2, at::kDouble), 1));
  }
  return sat;
}

// [B, H + 1, W + 1, 3] summed-area table of the NaN, +Inf and -Inf pixels (kernels/crop_saliency.h), with a
// zero first row and column: two integer scans. int32 while an image has fewer than 2^31 pixels (no count
// can overflow), else int64 (or int64 when wide_counts: the grid-runner tests of that path).
inline at::Tensor crop_saliency_count_table(const at::Tensor& saliency, bool wide_counts) {
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2);
  wide_counts = wide_counts || H * W > std::numeric_limits<int32_t>::max();
  const auto count_dtype = wide_counts ? at::kLong : at::kInt;
  at::Tensor counts = at::zeros({B, H + 1, W + 1, kNonFiniteKinds}, saliency.options().dtype(count_dtype));
  if (saliency.numel() > 0) {
    const at::Tensor kinds = at::stack({at::isnan(saliency), at::isposinf(saliency), at::isneginf(saliency)}, -1);
    counts.narrow(1, 1, H).narrow(2, 1, W).copy_(at::cumsum(at::cumsum(kinds, 2, count_dtype), 1));
  }
  return counts;
}

// Accumulate the corner updates into the [B, H + 1, W + 1] difference array (index_put_ with
// accumulate, which honours torch.use_deterministic_algorithms) and prefix-sum it in float64. Row H
// and column W of the array never reach [0, H) x [0, W), so they are sliced off first.
inline at::Tensor crop_saliency_adjoint(const at::Tensor& offset, const at::Tensor& value, int64_t B, int64_t H,
                                        int64_t W) {
  at::Tensor diff = at::zeros({B * (H + 1) * (W + 1)}, value.options());
  diff.index_put_({offset}, value, /*accumulate=*/true);
  const at::Tensor inner = diff.view({B, H + 1, W + 1}).narrow(1, 0, H).narrow(2, 0, W);
  return at::cumsum(at::cumsum(inner, 2), 1).to(at::kFloat);
}

// crop_saliency through a launcher, after check_crop_saliency_args: the tables (finite pixels, NaN/Inf
// counts: no device->host read to find out whether the map has any), then one look-up launch that checks
// every box with a device-side assert (check = true, as the CUDA op always does). With check = false the
// launch flags invalid boxes instead and clamps them (the grid-runner tests). Returns (means, invalid-box
// flags: undefined when check).
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor> crop_saliency_grid(const at::Tensor& saliency, const at::Tensor& boxes,
                                                      const Launcher& launcher, bool check,
                                                      bool wide_counts = false) {
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2), N = boxes.size(1);
  at::Tensor out = at::empty({B, N}, saliency.options());
  at::Tensor invalid = check ? at::Tensor() : at::zeros({B, N}, saliency.options().dtype(at::kByte));
  if (B * N == 0) {
    return {out, invalid};
  }
  const at::Tensor sat = crop_saliency_table(saliency);
  const at::Tensor counts = crop_saliency_count_table(saliency, wide_counts);
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_grid", [&] {
    const auto launch = [&](auto count_type) {
      using Body = CropSaliencyLookupBody<index_t, decltype(count_type)>;
      launcher(Body{},
               typename Body::Params{sat.data_ptr<double>(), counts.data_ptr<decltype(count_type)>(),
                                     box_table<index_t>(boxes), H, W, out.data_ptr<float>(),
                                     check ? nullptr : invalid.data_ptr<uint8_t>()},
               B * N);
    };
    if (counts.scalar_type() == at::kLong) {
      launch(int64_t{});
    } else {
      launch(int32_t{});
    }
  });
  return {out, invalid};
}

// _crop_saliency_backward through a launcher, after check_crop_saliency_backward_args: one corner
// launch, then the ATen accumulation and scans (crop_saliency_adjoint).
template <typename Launcher>
at::Tensor crop_saliency_backward_grid(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W,
                                       const Launcher& launcher) {
  const int64_t B = boxes.size(0), N = boxes.size(1);
  if (B * H * W == 0) {
    return at::empty({B, H, W}, grad.options());
  }
  at::Tensor offset = at::empty({B * N * 4}, grad.options().dtype(at::kLong));
  at::Tensor value = at::empty({B * N * 4}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_backward_grid", [&] {
    using Body = CropSaliencyCornersBody<index_t>;
    launcher(Body{},
             typename Body::Params{grad.data_ptr<float>(), grad.stride(0), grad.stride(1), box_table<index_t>(boxes),
                                   H, W, offset.data_ptr<int64_t>(), value.data_ptr<double>()},
             B * N);
  });
  return crop_saliency_adjoint(offset, value, B, H, W);
}

}  // namespace lmcl
