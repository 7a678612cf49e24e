// crop_saliency schema and argument checks (no kernels here).
#include "ops/crop_saliency.h"

#include <torch/library.h>

#include "ops/boxes.h"

namespace lmcl {

void check_crop_saliency_args(const at::Tensor& saliency, const at::Tensor& boxes) {
  TORCH_CHECK_TYPE(saliency.scalar_type() == at::kFloat,
                   "crop_saliency: saliency must be float32 (float64 maps are rejected), got ",
                   saliency.scalar_type());
  TORCH_CHECK(saliency.dim() == 3, "crop_saliency: saliency must have shape [B, H, W], got ", saliency.sizes());
  check_boxes_arg("crop_saliency", boxes);
  check_boxes_match("crop_saliency", boxes, saliency.size(0), saliency.device(), "saliency");
}

void check_crop_saliency_backward_args(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W) {
  constexpr const char* op = "_crop_saliency_backward";
  TORCH_CHECK_TYPE(grad.scalar_type() == at::kFloat, op, ": grad must be float32, got ", grad.scalar_type());
  check_boxes_arg(op, boxes);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == boxes.size(0) && grad.size(1) == boxes.size(1), op,
              ": grad must have shape [B, N] = ", boxes.sizes().slice(0, 2), " of boxes, got ", grad.sizes());
  TORCH_CHECK(H >= 0 && W >= 0, op, ": H and W must be >= 0, got H = ", H, ", W = ", W);
  check_boxes_match(op, boxes, grad.size(0), grad.device(), "grad");
}

}  // namespace lmcl

TORCH_LIBRARY_FRAGMENT(lmcl, m) {
  m.def("crop_saliency(Tensor saliency, Tensor boxes) -> Tensor");
  // The adjoint of the box mean: grad [B, N] -> gradient of saliency [B, H, W].
  m.def("_crop_saliency_backward(Tensor grad, Tensor boxes, SymInt H, SymInt W) -> Tensor");
}
