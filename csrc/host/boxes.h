// The box rule on the host: the CPU box check (with the ValueError) and the launch of the GPU box check.
// Shared by every op's CPU entry, CUDA entry and the grid runner. The CPU check loops over the boxes before
// any kernel; the GPU check is a device-side assert (BoxCheckBody, or the op's own kernel), with no
// device->host read. Predicate, clamps and error text: kernels/boxes.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstdio>

#include "kernels/boxes.h"

namespace lmcl {

// boxes: int32/int64 [B, N, 4] with any strides.
template <typename index_t>
BoxTable<index_t> box_table(const at::Tensor& boxes) {
  return BoxTable<index_t>{boxes.data_ptr<index_t>(), boxes.stride(0), boxes.stride(1), boxes.stride(2),
                           boxes.size(0), boxes.size(1)};
}

// The ValueError for box (b, n) outside the H x W image or with height/width < 1 (SPEC §1.1): the text of
// the GPU's device-side assert (LMCL_INVALID_BOX_FORMAT).
[[noreturn]] inline void raise_invalid_box(const char* op, int64_t b, int64_t n, const Box& box, int64_t H,
                                           int64_t W) {
  using ll = long long;
  raise_kernel_check(LMCL_INVALID_BOX_FORMAT, op, ll(H), ll(W), ll(b), ll(n), ll(box.top), ll(box.left),
                     ll(box.height), ll(box.width), ll(H), ll(W));
}

// An op's name for a device-side message (truncated to fit OpName).
inline OpName op_name(const char* op) {
  OpName name{};
  std::snprintf(name.text, sizeof(name.text), "%s", op);
  return name;
}

// The CPU check: boxes on the host, every box valid, before any kernel runs.
inline void check_boxes_on_host(const char* op, const at::Tensor& boxes, int64_t H, int64_t W) {
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::check_boxes_on_host", [&] {
    const BoxTable<index_t> table = box_table<index_t>(boxes);
    for (int64_t b = 0; b < table.B; ++b) {
      for (int64_t n = 0; n < table.N; ++n) {
        const Box box = table(b, n);
        if (!box_is_valid(box, H, W)) {
          raise_invalid_box(op, b, n, box, H, W);
        }
      }
    }
  });
}

// The GPU check as a launch of its own (ops whose kernels do not check boxes themselves), enqueued on the
// stream before the op's kernel.
template <typename Launcher>
void check_boxes_on_device(const char* op, const at::Tensor& boxes, int64_t H, int64_t W, const Launcher& launcher) {
  if (boxes.numel() == 0) {
    return;
  }
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::check_boxes_on_device", [&] {
    launcher(BoxCheckBody<index_t>{},
             typename BoxCheckBody<index_t>::Params{box_table<index_t>(boxes), H, W, op_name(op)},
             boxes.size(0) * boxes.size(1));
  });
}

}  // namespace lmcl
