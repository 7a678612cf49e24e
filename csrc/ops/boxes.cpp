// Metadata checks of a `boxes` argument (see boxes.h).
#include "ops/boxes.h"

namespace lmcl {

void check_boxes_arg(const char* op, const at::Tensor& boxes) {
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kInt || boxes.scalar_type() == at::kLong, op,
                   ": boxes must be int32 or int64, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 4, op,
              ": boxes must have shape [B, N, 4] (top, left, height, width), got ", boxes.sizes());
}

void check_boxes_match(const char* op, const at::Tensor& boxes, int64_t B, const at::Device& device,
                       const char* source) {
  TORCH_CHECK(boxes.size(0) == B, op, ": boxes must have the batch size B = ", B, " of ", source,
              ", got boxes of shape ", boxes.sizes());
  TORCH_CHECK(boxes.device() == device, op, ": boxes must be on the device of ", source, " (", device, "), got ",
              boxes.device());
}

}  // namespace lmcl
