// crop_saliency schema and argument checks (no kernels here).
#include "ops/crop_saliency.h"

#include <torch/library.h>

namespace lmcl {

namespace {

void check_boxes(const char* op, const at::Tensor& boxes) {
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kInt || boxes.scalar_type() == at::kLong, op,
                   ": boxes must be int32 or int64, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 4, op, ": boxes must have shape [B, N, 4], got ",
              boxes.sizes());
}

}  // namespace

void check_crop_saliency_args(const at::Tensor& saliency, const at::Tensor& boxes) {
  TORCH_CHECK_TYPE(saliency.scalar_type() == at::kFloat,
                   "crop_saliency: saliency must be float32 (float64 maps are rejected), got ",
                   saliency.scalar_type());
  TORCH_CHECK(saliency.dim() == 3, "crop_saliency: saliency must have shape [B, H, W], got ", saliency.sizes());
  check_boxes("crop_saliency", boxes);
  TORCH_CHECK(boxes.size(0) == saliency.size(0), "crop_saliency: boxes must have the batch size B = ",
              saliency.size(0), " of saliency, got boxes of shape ", boxes.sizes());
  TORCH_CHECK(boxes.device() == saliency.device(), "crop_saliency: boxes must be on the device of saliency (",
              saliency.device(), "), got ", boxes.device());
}

void check_crop_saliency_backward_args(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W) {
  TORCH_CHECK_TYPE(grad.scalar_type() == at::kFloat, "_crop_saliency_backward: grad must be float32, got ",
                   grad.scalar_type());
  check_boxes("_crop_saliency_backward", boxes);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == boxes.size(0) && grad.size(1) == boxes.size(1),
              "_crop_saliency_backward: grad must have shape [B, N] = ", boxes.sizes().slice(0, 2),
              " of boxes, got ", grad.sizes());
  TORCH_CHECK(H >= 0 && W >= 0, "_crop_saliency_backward: H and W must be >= 0, got H = ", H, ", W = ", W);
  TORCH_CHECK(boxes.device() == grad.device(), "_crop_saliency_backward: boxes must be on the device of grad (",
              grad.device(), "), got ", boxes.device());
}

}  // namespace lmcl

TORCH_LIBRARY_FRAGMENT(lmcl, m) {
  m.def("crop_saliency(Tensor saliency, Tensor boxes) -> Tensor");
  // The adjoint of the box mean: grad [B, N] -> gradient of saliency [B, H, W].
  m.def("_crop_saliency_backward(Tensor grad, Tensor boxes, SymInt H, SymInt W) -> Tensor");
}
