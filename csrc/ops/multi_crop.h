// multi_crop argument checks shared by the CPU and CUDA entries (schema in multi_crop.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lmcl {

// Metadata rules of SPEC §1.1 (dtype, rank, C, boxes/flip shape and dtype, mean/std length, std != 0,
// out_dtype, device match, size). Mirrored by torch._check in the fake (lmcl_fast/ops/multi_crop.py).
void check_multi_crop_args(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                           const std::optional<at::ArrayRef<double>>& mean,
                           const std::optional<at::ArrayRef<double>>& std,
                           const std::optional<at::Tensor>& flip, at::ScalarType out_dtype);

// Rules of _multi_crop_backward (grad [B, N, C, S_h, S_w], boxes, flip, std, image height/width).
void check_multi_crop_backward_args(const at::Tensor& grad, const at::Tensor& boxes,
                                    const std::optional<at::ArrayRef<double>>& std,
                                    const std::optional<at::Tensor>& flip, int64_t height, int64_t width);

}  // namespace lmcl
