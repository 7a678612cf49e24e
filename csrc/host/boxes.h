// The box rule on the host: the one error text, the CPU box check and the GPU box check.
// Shared by every op's CPU entry, CUDA entry and the grid runner. The CPU check loops over the boxes before
// any kernel; the GPU check is BoxFlagsBody, then one device->host read. Predicate and clamps:
// kernels/boxes.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "kernels/boxes.h"

namespace lmcl {

// boxes: int32/int64 [B, N, 4] with any strides.
template <typename index_t>
BoxTable<index_t> box_table(const at::Tensor& boxes) {
  return BoxTable<index_t>{boxes.data_ptr<index_t>(), boxes.stride(0), boxes.stride(1), boxes.stride(2),
                           boxes.size(0), boxes.size(1)};
}

// The ValueError for box (b, n) outside the H x W image or with height/width < 1 (SPEC §1.1).
[[noreturn]] inline void raise_invalid_box(const char* op, int64_t b, int64_t n, const Box& box, int64_t H,
                                           int64_t W) {
  TORCH_CHECK_VALUE(false, op, ": boxes must lie inside the ", H, "x", W,
                    " image with height, width >= 1 (top >= 0, left >= 0, top + height <= H, left + width <= W), "
                    "got boxes[", b, ", ", n, "] = (top, left, height, width) = (", box.top, ", ", box.left, ", ",
                    box.height, ", ", box.width, ") for an image of H x W = ", H, " x ", W);
  TORCH_INTERNAL_ASSERT(false, "unreachable");
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

// The GPU check after the flags are computed (BoxFlagsBody, or a kernel that flags as it goes): one
// device->host read of the index of the first flagged box (or -1); only on failure is that box read
// back for the message.
inline void check_box_flags(const char* op, const at::Tensor& invalid, const at::Tensor& boxes, int64_t H, int64_t W) {
  const at::Tensor flat = invalid.reshape({-1});
  const int64_t first = at::where(flat.amax().gt(0), flat.argmax(), -1).item<int64_t>();
  if (first >= 0) {
    const int64_t N = boxes.size(1), b = first / N, n = first % N;
    const at::Tensor box = boxes.select(0, b).select(0, n).to(at::kCPU, at::kLong);
    const int64_t* v = box.data_ptr<int64_t>();
    raise_invalid_box(op, b, n, Box{v[0], v[1], v[2], v[3]}, H, W);
  }
}

// The GPU check as a launch of its own (ops whose kernels do not flag boxes themselves).
template <typename Launcher>
void check_boxes_on_device(const char* op, const at::Tensor& boxes, int64_t H, int64_t W, const Launcher& launcher) {
  if (boxes.numel() == 0) {
    return;
  }
  at::Tensor invalid = at::empty({boxes.size(0), boxes.size(1)}, boxes.options().dtype(at::kByte));
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::check_boxes_on_device", [&] {
    launcher(BoxFlagsBody<index_t>{}, typename BoxFlagsBody<index_t>::Params{box_table<index_t>(boxes), H, W,
                                                                            invalid.data_ptr<uint8_t>()},
             invalid.numel());
  });
  check_box_flags(op, invalid, boxes, H, W);
}

}  // namespace lmcl
