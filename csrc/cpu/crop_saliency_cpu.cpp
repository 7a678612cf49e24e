// crop_saliency on the CPU, parallel over images (grain 1); every chunk writes its own images, so
// results are bit-reproducible. Per image, one sweep down the map:
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

#include "kernels/crop_saliency.h"
#include "ops/crop_saliency.h"

namespace lmcl {

namespace {

// The box value rule of SPEC §1.1, checked before any kernel runs.
template <typename index_t>
void check_boxes_inside(const at::Tensor& boxes, int64_t H, int64_t W) {
  const auto acc = boxes.accessor<index_t, 3>();
  for (int64_t b = 0; b < boxes.size(0); ++b) {
    for (int64_t n = 0; n < boxes.size(1); ++n) {
      const int64_t t = acc[b][n][0], l = acc[b][n][1], h = acc[b][n][2], w = acc[b][n][3];
      if (!box_is_valid(t, l, h, w, H, W)) {
        raise_invalid_box(b, n, t, l, h, w, H, W);
      }
    }
  }
}

// One image's boxes, read through strides.
template <typename index_t>
struct ImageBoxes {
  const index_t* ptr;
  int64_t stride_n, stride_c, N, H, W;
  ClampedBox operator[](int64_t n) const { return load_box(ptr + n * stride_n, stride_c, H, W); }
};

// The 2N top/bottom events of one image's boxes, sorted by row (std::sort works in place).
template <typename index_t>
void sorted_box_events(const ImageBoxes<index_t>& boxes, int64_t* events) {
  const int64_t N = boxes.N;
  for (int64_t n = 0; n < N; ++n) {
    const ClampedBox c = boxes[n];
    events[2 * n] = box_event_key(c.t0, n, false, N);
    events[2 * n + 1] = box_event_key(c.t1, n, true, N);
  }
  std::sort(events, events + 2 * N);
}

at::Tensor crop_saliency_cpu(const at::Tensor& saliency, const at::Tensor& boxes) {
  check_crop_saliency_args(saliency, boxes);
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2), N = boxes.size(1);
  at::Tensor out = at::empty({B, N}, saliency.options());
  if (B * N == 0) {
    return out;
  }
  const auto f64 = saliency.options().dtype(at::kDouble);
  at::Tensor events = at::empty({B, 2 * N}, saliency.options().dtype(at::kLong));
  at::Tensor colsum = at::zeros({B, W}, f64);
  at::Tensor rows = at::empty({B, W + 1}, f64);
  at::Tensor sums = at::zeros({B, N}, f64);
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_cpu", [&] {
    check_boxes_inside<index_t>(boxes, H, W);
    const index_t* box_ptr = boxes.data_ptr<index_t>();
    const float* src = saliency.data_ptr<float>();
    const int64_t ss_b = saliency.stride(0), ss_h = saliency.stride(1), ss_w = saliency.stride(2);
    int64_t* ev_ptr = events.data_ptr<int64_t>();
    double* col_ptr = colsum.data_ptr<double>();
    double* row_ptr = rows.data_ptr<double>();
    double* sum_ptr = sums.data_ptr<double>();
    float* out_ptr = out.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const ImageBoxes<index_t> img_boxes{box_ptr + b * boxes.stride(0), boxes.stride(1), boxes.stride(2), N, H, W};
        int64_t* ev = ev_ptr + b * 2 * N;
        double* cols = col_ptr + b * W;
        double* row = row_ptr + b * (W + 1);
        double* sum = sum_ptr + b * N;
        sorted_box_events(img_boxes, ev);
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
      }
    });
  });
  return out;
}

at::Tensor crop_saliency_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W) {
  check_crop_saliency_backward_args(grad, boxes, H, W);
  const int64_t B = boxes.size(0), N = boxes.size(1);
  at::Tensor grad_in = at::empty({B, H, W}, grad.options());
  if (grad_in.numel() == 0) {
    return grad_in;
  }
  at::Tensor events = at::empty({B, 2 * N}, grad.options().dtype(at::kLong));
  at::Tensor carry = at::zeros({B, W + 1}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_backward_cpu", [&] {
    const index_t* box_ptr = boxes.data_ptr<index_t>();
    const float* g_ptr = grad.data_ptr<float>();
    const int64_t gs_b = grad.stride(0), gs_n = grad.stride(1);
    int64_t* ev_ptr = events.data_ptr<int64_t>();
    double* carry_ptr = carry.data_ptr<double>();
    float* out_ptr = grad_in.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const ImageBoxes<index_t> img_boxes{box_ptr + b * boxes.stride(0), boxes.stride(1), boxes.stride(2), N, H, W};
        int64_t* ev = ev_ptr + b * 2 * N;
        double* cols = carry_ptr + b * (W + 1);
        sorted_box_events(img_boxes, ev);
        int64_t e = 0;
        for (int64_t i = 0; i < H; ++i) {
          for (; e < 2 * N && box_event_row(ev[e], N) == i; ++e) {
            const int64_t n = box_event_box(ev[e], N);
            const ClampedBox c = img_boxes[n];
            const double v = box_adjoint_value(static_cast<double>(g_ptr[b * gs_b + n * gs_n]), c);
            box_adjoint_event(cols, c, v, box_event_bottom(ev[e]));
          }
          adjoint_row_from_carry(cols, out_ptr + (b * H + i) * W, W);
        }
      }
    });
  });
  return grad_in;
}

}  // namespace

}  // namespace lmcl

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("crop_saliency", &lmcl::crop_saliency_cpu);
  m.impl("_crop_saliency_backward", &lmcl::crop_saliency_backward_cpu);
}
