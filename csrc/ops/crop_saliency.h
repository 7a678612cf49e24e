// crop_saliency argument checks shared by the CPU and CUDA entries (schema in crop_saliency.cpp).
#pragma once

#include <ATen/ATen.h>

namespace lmcl {

// saliency float32 [B, H, W]; boxes int32/int64 [B, N, 4]; same B; same device.
void check_crop_saliency_args(const at::Tensor& saliency, const at::Tensor& boxes);

// grad float32 [B, N]; boxes as above; H, W >= 0; same device.
void check_crop_saliency_backward_args(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W);

}  // namespace lmcl
