// crop_saliency: metadata checks shared by the CPU and CUDA kernels (SPEC §1.3).
#pragma once

#include <ATen/ATen.h>

namespace lmcl {

// saliency float32 [B, H, W]; boxes int32/int64 [B, N, 4]; same B; same device.
void check_crop_saliency_args(const at::Tensor& saliency, const at::Tensor& boxes);

// grad float32 [B, N]; boxes as above; H, W >= 0; same device.
void check_crop_saliency_backward_args(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W);

// The ValueError for a box outside the H x W image or with height/width < 1 (SPEC §1.1). Inline so the
// grid-runner tests, which do not link the library, raise through the same code as the CUDA op.
[[noreturn]] inline void raise_invalid_box(int64_t b, int64_t n, int64_t t, int64_t l, int64_t h, int64_t w,
                                           int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(false, "crop_saliency: boxes must lie inside the ", H, "x", W,
                    " image with height, width >= 1, got boxes[", b, ", ", n, "] = (top ", t, ", left ", l,
                    ", height ", h, ", width ", w, ")");
  TORCH_INTERNAL_ASSERT(false, "unreachable");
}

}  // namespace lmcl
