// multi_crop schema (SPEC §1.1) and its hidden backward, plus the argument checks both backends run.
#include "ops/multi_crop.h"

#include "host/multi_crop.h"
#include "ops/boxes.h"

#include <torch/library.h>

#include <cmath>

namespace lmcl {

namespace {

void check_channel_values(const char* op, const char* name, const std::optional<at::ArrayRef<double>>& values,
                          int64_t channels) {
  if (values.has_value()) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(values->size()) == channels, op, ": ", name,
                      " must have one value per channel (C = ", channels, "), got ", values->size(), " values");
    // A NaN or Inf normalisation constant would turn every output value of its channel into NaN, 0 or Inf.
    for (size_t c = 0; c < values->size(); ++c) {
      TORCH_CHECK_VALUE(std::isfinite((*values)[c]), op, ": ", name, " must be finite for every channel, got ",
                        name, "[", c, "] = ", (*values)[c]);
    }
  }
}

void check_std_nonzero(const char* op, const std::optional<at::ArrayRef<double>>& std) {
  if (!std.has_value()) {
    return;
  }
  for (size_t c = 0; c < std->size(); ++c) {
    TORCH_CHECK_VALUE((*std)[c] != 0.0, op, ": std must be non-zero for every channel, got std[", c,
                      "] = ", (*std)[c]);
  }
}

void check_boxes_and_flip(const char* op, const at::Tensor& boxes, const std::optional<at::Tensor>& flip,
                          int64_t B, const at::Device& device, const char* source) {
  check_boxes_arg(op, boxes);
  check_boxes_match(op, boxes, B, device, source);
  if (flip.has_value()) {
    TORCH_CHECK_TYPE(flip->scalar_type() == at::kBool, op, ": flip must be a bool tensor, got ",
                     flip->scalar_type());
    TORCH_CHECK(flip->dim() == 2 && flip->size(0) == B && flip->size(1) == boxes.size(1), op,
                ": flip must have shape [B, N] = [", B, ", ", boxes.size(1), "], got ", flip->sizes());
    TORCH_CHECK(flip->device() == device, op, ": flip must be on the device of ", source, " (", device, "), got ",
                flip->device());
  }
}

}  // namespace

void check_multi_crop_args(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                           const std::optional<at::ArrayRef<double>>& mean,
                           const std::optional<at::ArrayRef<double>>& std,
                           const std::optional<at::Tensor>& flip, at::ScalarType out_dtype) {
  constexpr const char* op = "multi_crop";
  TORCH_CHECK_TYPE(images.scalar_type() == at::kByte || images.scalar_type() == at::kFloat, op,
                   ": images must be uint8 [B, H, W, C] or float32 [B, C, H, W], got ", images.scalar_type());
  TORCH_CHECK(images.dim() == 4, op, ": images must be 4-D (uint8 [B, H, W, C] or float32 [B, C, H, W]), got ",
              images.dim(), "-D with shape ", images.sizes());
  const int64_t C = multi_crop_channels(images);
  TORCH_CHECK(C == 1 || C == 3, op, ": images must have C = 1 or 3 channels (dim ",
              images.scalar_type() == at::kByte ? 3 : 1, " for ", images.scalar_type(), "), got shape ",
              images.sizes());
  check_boxes_and_flip(op, boxes, flip, images.size(0), images.device(), "images");
  TORCH_CHECK(size.size() == 2, op, ": size must be (S_h, S_w), got ", size);
  TORCH_CHECK_VALUE(size[0] >= 1 && size[1] >= 1, op, ": size must be positive, got ", size);
  check_channel_values(op, "mean", mean, C);
  check_channel_values(op, "std", std, C);
  check_std_nonzero(op, std);
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16, op,
                   ": out_dtype must be float32, float16 or bfloat16, got ", out_dtype);
}

void check_multi_crop_backward_args(const at::Tensor& grad, const at::Tensor& boxes,
                                    const std::optional<at::ArrayRef<double>>& std,
                                    const std::optional<at::Tensor>& flip, int64_t height, int64_t width) {
  constexpr const char* op = "_multi_crop_backward";
  TORCH_CHECK_TYPE(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kHalf ||
                       grad.scalar_type() == at::kBFloat16,
                   op, ": grad must be float32, float16 or bfloat16, got ", grad.scalar_type());
  TORCH_CHECK(grad.dim() == 5 && (grad.size(2) == 1 || grad.size(2) == 3), op,
              ": grad must have shape [B, N, C, S_h, S_w] with C = 1 or 3, got ", grad.sizes());
  check_boxes_and_flip(op, boxes, flip, grad.size(0), grad.device(), "grad");
  TORCH_CHECK(boxes.size(1) == grad.size(1), op, ": boxes must have N = ", grad.size(1), " boxes per image, got ",
              boxes.sizes());
  TORCH_CHECK_VALUE(height >= 0 && width >= 0, op, ": height and width must be non-negative, got ", height, " x ",
                    width);
  check_channel_values(op, "std", std, grad.size(2));
  check_std_nonzero(op, std);
}

TORCH_LIBRARY_FRAGMENT(lmcl, m) {
  m.def(
      "multi_crop(Tensor images, Tensor boxes, SymInt[] size, float[]? mean, float[]? std, Tensor? flip, "
      "ScalarType out_dtype) -> Tensor");
  m.def(
      "_multi_crop_backward(Tensor grad, Tensor boxes, float[]? std, Tensor? flip, SymInt height, "
      "SymInt width) -> Tensor");
}

}  // namespace lmcl
