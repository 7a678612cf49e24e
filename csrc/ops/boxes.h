// Metadata checks of a `boxes` argument, shared by every op that takes boxes.
// Mirrored by lmcl_fast/ops/_boxes.py in the fake kernels; the value rule (inside the image) is host/boxes.h.
#pragma once

#include <ATen/ATen.h>

namespace lmcl {

// boxes: int32/int64 [B, N, 4], rows (top, left, height, width).
void check_boxes_arg(const char* op, const at::Tensor& boxes);

// boxes: one row of boxes per image of `source` (batch size B), on source's device.
void check_boxes_match(const char* op, const at::Tensor& boxes, int64_t B, const at::Device& device,
                       const char* source);

}  // namespace lmcl
