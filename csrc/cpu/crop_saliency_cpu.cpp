// crop_saliency on the CPU: per-image summed-area tables in float64 (parallel over B, grain 1), then
// four look-ups per box (parallel over B * N, grain 1024). The backward scatters each box's four
// corner updates into a per-image difference array and prefix-sums it (parallel over B, grain 1).
// Every chunk writes its own slice, so results are bit-reproducible.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

at::Tensor crop_saliency_cpu(const at::Tensor& saliency, const at::Tensor& boxes) {
  check_crop_saliency_args(saliency, boxes);
  const int64_t B = saliency.size(0), H = saliency.size(1), W = saliency.size(2), N = boxes.size(1);
  at::Tensor out = at::empty({B, N}, saliency.options());
  if (B * N == 0) {
    return out;
  }
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_cpu", [&] {
    check_boxes_inside<index_t>(boxes, H, W);
    const int64_t W1 = W + 1, table = (H + 1) * W1;
    at::Tensor sat = at::empty({B, H + 1, W1}, saliency.options().dtype(at::kDouble));
    double* sat_ptr = sat.data_ptr<double>();
    const float* src = saliency.data_ptr<float>();
    const int64_t ss_b = saliency.stride(0), ss_h = saliency.stride(1), ss_w = saliency.stride(2);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double* img = sat_ptr + b * table;
        for (int64_t j = 0; j < W1; ++j) {
          img[j] = 0.0;
        }
        for (int64_t i = 0; i < H; ++i) {
          sat_row_scan(src + b * ss_b + i * ss_h, ss_w, img + i * W1, img + (i + 1) * W1, W);
        }
      }
    });
    const index_t* box_ptr = boxes.data_ptr<index_t>();
    const int64_t bs_b = boxes.stride(0), bs_n = boxes.stride(1), bs_c = boxes.stride(2);
    float* out_ptr = out.data_ptr<float>();
    at::parallel_for(0, B * N, 1024, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / N;
        const index_t* box = box_ptr + b * bs_b + (i - b * N) * bs_n;
        out_ptr[i] = static_cast<float>(
            box_mean(sat_ptr + b * table, H, W, box[0], box[bs_c], box[2 * bs_c], box[3 * bs_c]));
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
  const int64_t W1 = W + 1, table = (H + 1) * W1;
  // Difference arrays and the running column sums, one per image, allocated outside the parallel region.
  at::Tensor diff = at::zeros({B, H + 1, W1}, grad.options().dtype(at::kDouble));
  at::Tensor carry = at::zeros({B, W}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_INDEX_TYPES(boxes.scalar_type(), "lmcl::crop_saliency_backward_cpu", [&] {
    const index_t* box_ptr = boxes.data_ptr<index_t>();
    const int64_t bs_b = boxes.stride(0), bs_n = boxes.stride(1), bs_c = boxes.stride(2);
    const float* g_ptr = grad.data_ptr<float>();
    const int64_t gs_b = grad.stride(0), gs_n = grad.stride(1);
    double* diff_ptr = diff.data_ptr<double>();
    double* carry_ptr = carry.data_ptr<double>();
    float* out_ptr = grad_in.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double* d = diff_ptr + b * table;
        for (int64_t n = 0; n < N; ++n) {
          const index_t* box = box_ptr + b * bs_b + n * bs_n;
          int64_t offset[4];
          double value[4];
          box_adjoint_corners<double>(H, W, box[0], box[bs_c], box[2 * bs_c], box[3 * bs_c],
                                      static_cast<double>(g_ptr[b * gs_b + n * gs_n]), offset, value);
          for (int k = 0; k < 4; ++k) {
            d[offset[k]] += value[k];
          }
        }
        for (int64_t i = 0; i < H; ++i) {
          adjoint_row_scan(d + i * W1, carry_ptr + b * W, out_ptr + (b * H + i) * W, W);
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
