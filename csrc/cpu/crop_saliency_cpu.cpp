// crop_saliency and its backward on the CPU: one row sweep per image, in parallel over images.
// Grain 1 image; every chunk writes its own images, so results are bit-reproducible. Per image, one
// sweep down the map:
//  forward:  running float64 column sums; at each row some box reads (its top or bottom), the table
//            row is built from them into a row buffer and those boxes take their two look-ups;
//  backward: running column sums of the box-corner difference array; each gradient row is their
//            prefix sum.
// Scratch (events, column sums, the row buffer, per-box sums) is O(B * (W + N)), allocated before the
// parallel region; no (H+1) x (W+1) table is stored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "host/boxes.h"
#include "kernels/crop_saliency.h"
#include "ops/crop_saliency.h"

namespace lmcl {

namespace {

// One image's boxes, clamped to the image (box_span).
template <typename index_t>
struct ImageBoxes {
  BoxTable<index_t> table;
  int64_t b, H, W;
  BoxSpan operator[](int64_t n) const { return box_span(table(b, n), H, W); }
};

// The 2N top/bottom events of one image's boxes, sorted by row (std::sort works in place).
template <typename index_t>
void sorted_box_events(const ImageBoxes<index_t>& boxes, int64_t* events) {
  const int64_t N = boxes.table.N;
  for (int64_t n = 0; n < N; ++n) {
    const BoxSpan c = boxes[n];
    events[2 * n] = box_event_key(c.t0, n, false, N);
    events[2 * n + 1] = box_event_key(c.t1, n, true, N);
  }
  std::sort(events, events + 2 * N);
}

// The row sweep's prologue, shared by forward and backward: for every image b in parallel (grain 1),
// sweep(b, boxes of image b, its 2N events sorted by row).
template <typename Sweep>
void for_each_image_sweep(const at::Tensor& boxes, int64_t H, int64_t W, const Sweep& sweep) {
  const int64_t B = boxes.size(0), N = boxes.size(1);
  at::Tensor events = at::empty({B, 2 * N}, boxes.options().dtype(at::kLong));
  int64_t* ev_ptr = events.data_ptr<int64_t>();
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_sweep", [&] {
    const BoxTable<index_t> table = box_table<index_t>(boxes);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const ImageBoxes<index_t> img_boxes{table, b, H, W};
        int64_t* ev = ev_ptr + b * 2 * N;
        sorted_box_events(img_boxes, ev);
        sweep(b, img_boxes, ev);
      }
    });
  });
}

at::Tensor box_means_of_nonfinite_map(const at::Tensor& saliency, const at::Tensor& boxes);

at::Tensor crop_saliency_cpu(const at::Tensor& saliency, const at::Tensor& boxes) {
  check_crop_saliency_args(saliency, boxes);
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2), N = boxes.size(1);
  at::Tensor out = at::empty({B, N}, saliency.options());
  if (B * N == 0) {
    return out;
  }
  check_boxes_on_host("crop_saliency", boxes, H, W);
  const auto f64 = saliency.options().dtype(at::kDouble);
  at::Tensor colsum = at::zeros({B, W}, f64);
  at::Tensor rows = at::empty({B, W + 1}, f64);
  at::Tensor sums = at::zeros({B, N}, f64);
  const float* src = saliency.data_ptr<float>();
  const int64_t ss_b = saliency.stride(0), ss_h = saliency.stride(1), ss_w = saliency.stride(2);
  double* col_ptr = colsum.data_ptr<double>();
  double* row_ptr = rows.data_ptr<double>();
  double* sum_ptr = sums.data_ptr<double>();
  float* out_ptr = out.data_ptr<float>();
  for_each_image_sweep(boxes, H, W, [&](int64_t b, const auto& img_boxes, const int64_t* ev) {
    double* cols = col_ptr + b * W;
    double* row = row_ptr + b * (W + 1);
    double* sum = sum_ptr + b * N;
    int64_t r = 0;  // map rows [0, r) are in cols
    for (int64_t e = 0; e < 2 * N;) {
      const int64_t target = box_event_row(ev[e], N);
      for (; r < target; ++r) {
        sat_add_row(src + b * ss_b + r * ss_h, ss_w, cols, W);
      }
      sat_row_from_columns(cols, row, W);
      for (; e < 2 * N && box_event_row(ev[e], N) == target; ++e) {
        const int64_t n = box_event_box(ev[e], N);
        box_sum_event(sum[n], row, img_boxes[n], box_event_bottom(ev[e]));
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      out_ptr[b * N + n] = static_cast<float>(box_mean_from_sum(sum[n], img_boxes[n]));
    }
  });
  // Means of a finite map are finite (float64 sums, a mean never exceeds the largest value): a non-finite one
  // means NaN or Inf pixels, which the table spreads to boxes that do not contain them.
  if (!at::isfinite(out).all().item<bool>()) {
    return box_means_of_nonfinite_map(saliency, boxes);
  }
  return out;
}

// The slow definition's means for a map with NaN or Inf pixels: the finite pixels go through the table, and
// each box's NaN, +Inf and -Inf pixels show in its mean of the 0/1 map of each kind (> 0 exactly when it holds
// one), combined as the CUDA kernel combines its counts (box_mean_with_nonfinite).
at::Tensor box_means_of_nonfinite_map(const at::Tensor& saliency, const at::Tensor& boxes) {
  at::Tensor out = crop_saliency_cpu(at::nan_to_num(saliency, 0.0, 0.0, 0.0), boxes);
  const auto share = [&](const at::Tensor& mask) { return crop_saliency_cpu(mask.to(at::kFloat), boxes); };
  const at::Tensor nan = share(at::isnan(saliency)), pinf = share(at::isposinf(saliency)),
                   ninf = share(at::isneginf(saliency));
  float* o = out.data_ptr<float>();
  const float *n = nan.data_ptr<float>(), *p = pinf.data_ptr<float>(), *m = ninf.data_ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    o[i] = box_mean_with_nonfinite(o[i], n[i], p[i], m[i]);
  }
  return out;
}

at::Tensor crop_saliency_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W) {
  check_crop_saliency_backward_args(grad, boxes, H, W);
  const int64_t B = boxes.size(0), N = boxes.size(1);
  at::Tensor grad_in = at::empty({B, H, W}, grad.options());
  if (grad_in.numel() == 0) {
    return grad_in;
  }
  at::Tensor carry = at::zeros({B, W + 1}, grad.options().dtype(at::kDouble));
  const float* g_ptr = grad.data_ptr<float>();
  const int64_t gs_b = grad.stride(0), gs_n = grad.stride(1);
  double* carry_ptr = carry.data_ptr<double>();
  float* out_ptr = grad_in.data_ptr<float>();
  for_each_image_sweep(boxes, H, W, [&](int64_t b, const auto& img_boxes, const int64_t* ev) {
    double* cols = carry_ptr + b * (W + 1);
    int64_t e = 0;
    for (int64_t i = 0; i < H; ++i) {
      for (; e < 2 * N && box_event_row(ev[e], N) == i; ++e) {
        const int64_t n = box_event_box(ev[e], N);
        const BoxSpan c = img_boxes[n];
        const double v = box_adjoint_value(static_cast<double>(g_ptr[b * gs_b + n * gs_n]), c);
        box_adjoint_event(cols, c, v, box_event_bottom(ev[e]));
      }
      adjoint_row_from_carry(cols, out_ptr + (b * H + i) * W, W);
    }
  });
  return grad_in;
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("crop_saliency", &lmcl::crop_saliency_cpu);
  m.impl("_crop_saliency_backward", &lmcl::crop_saliency_backward_cpu);
}
