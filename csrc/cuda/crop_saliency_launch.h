// Host side of the crop_saliency CUDA launches: tensors -> Params, the launch configs, the table and
// the backward's ATen steps, and the one device->host read of the box check. Host-only (ATen, no CUDA
// API), so the grid-runner tests (python_tests/grid_runner) run exactly this code on CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include "kernels/common.h"
#include "kernels/crop_saliency.h"
#include "ops/crop_saliency.h"

namespace lmcl {

// [B, H + 1, W + 1] float64 summed-area table with a zero first row and column: two ATen scans in
// float64 (along rows, then down columns), reading saliency through its strides.
inline at::Tensor crop_saliency_table(const at::Tensor& saliency) {
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2);
  at::Tensor sat = at::zeros({B, H + 1, W + 1}, saliency.options().dtype(at::kDouble));
  if (saliency.numel() > 0) {
    sat.narrow(1, 1, H).narrow(2, 1, W).copy_(at::cumsum(at::cumsum(saliency, 2, at::kDouble), 1));
  }
  return sat;
}

inline LaunchConfig crop_saliency_box_config(int64_t boxes, int64_t threads = 256, int64_t max_blocks = 4096) {
  return grid_stride_config(boxes, threads, max_blocks);
}

template <typename index_t>
typename CropSaliencyLookupBody<index_t>::Params crop_saliency_lookup_params(const at::Tensor& sat,
                                                                             const at::Tensor& boxes, at::Tensor& out,
                                                                             at::Tensor& invalid) {
  typename CropSaliencyLookupBody<index_t>::Params p;
  p.sat = sat.data_ptr<double>();
  p.boxes = boxes.data_ptr<index_t>();
  p.box_stride_b = boxes.stride(0);
  p.box_stride_n = boxes.stride(1);
  p.box_stride_c = boxes.stride(2);
  p.out = out.data_ptr<float>();
  p.invalid = invalid.data_ptr<uint8_t>();
  p.B = boxes.size(0);
  p.N = boxes.size(1);
  p.H = sat.size(1) - 1;
  p.W = sat.size(2) - 1;
  return p;
}

// The box check of the CUDA op, after the look-up kernel: a single device->host read of the index of
// the first flagged box (or -1); only on failure is that box read back for the message.
inline void check_crop_saliency_flags(const at::Tensor& invalid, const at::Tensor& boxes, int64_t H, int64_t W) {
  const at::Tensor flat = invalid.reshape({-1});
  const int64_t first = at::where(flat.amax().gt(0), flat.argmax(), -1).item<int64_t>();
  if (first >= 0) {
    const int64_t N = boxes.size(1), b = first / N, n = first % N;
    const at::Tensor box = boxes.select(0, b).select(0, n).to(at::kCPU, at::kLong);
    const int64_t* v = box.data_ptr<int64_t>();
    raise_invalid_box(b, n, v[0], v[1], v[2], v[3], H, W);
  }
}

template <typename index_t>
typename CropSaliencyCornersBody<index_t>::Params crop_saliency_corners_params(const at::Tensor& grad,
                                                                               const at::Tensor& boxes,
                                                                               at::Tensor& offset, at::Tensor& value,
                                                                               int64_t H, int64_t W) {
  typename CropSaliencyCornersBody<index_t>::Params p;
  p.grad = grad.data_ptr<float>();
  p.grad_stride_b = grad.stride(0);
  p.grad_stride_n = grad.stride(1);
  p.boxes = boxes.data_ptr<index_t>();
  p.box_stride_b = boxes.stride(0);
  p.box_stride_n = boxes.stride(1);
  p.box_stride_c = boxes.stride(2);
  p.offset = offset.data_ptr<int64_t>();
  p.value = value.data_ptr<double>();
  p.B = boxes.size(0);
  p.N = boxes.size(1);
  p.H = H;
  p.W = W;
  return p;
}

// Accumulate the corner updates into the [B, H + 1, W + 1] difference array (index_put_ with
// accumulate, which honours torch.use_deterministic_algorithms) and prefix-sum it in float64. Row H
// and column W of the array never reach [0, H) x [0, W), so they are sliced off first.
inline at::Tensor crop_saliency_adjoint(const at::Tensor& offset, const at::Tensor& value, int64_t B, int64_t H,
                                        int64_t W) {
  at::Tensor diff = at::zeros({B * (H + 1) * (W + 1)}, value.options());
  diff.index_put_({offset}, value, /*accumulate=*/true);
  const at::Tensor inner = diff.view({B, H + 1, W + 1}).narrow(1, 0, H).narrow(2, 0, W);
  return at::cumsum(at::cumsum(inner, 2), 1).to(at::kFloat);
}

}  // namespace lmcl
