// multi_crop and its backward on the CPU: the at::parallel_for backend of host/multi_crop.h.
// Forward: one chunk = a run of output rows;
// backward: one chunk = whole image planes (b, c), so every thread owns what it writes and the result
// is bit-reproducible.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "host/boxes.h"
#include "host/multi_crop.h"
#include "kernels/multi_crop.h"
#include "ops/multi_crop.h"

namespace lmcl {

namespace {

struct MultiCropCpu {
  // Every box is checked on the host before any kernel runs.
  void check_boxes(const char* op, const at::Tensor& boxes64, int64_t H, int64_t W) const {
    check_boxes_on_host(op, boxes64, H, W);
  }

  template <int kC, typename in_t, typename out_t>
  void forward(const MultiCropParams<in_t, out_t>& p) const {
    const int64_t crops = p.B * p.N;
    // Column taps once per crop (torchvision roi_align_common.h style), reused by every row and channel.
    using acc_t = typename MultiCropParams<in_t, out_t>::acc_t;
    std::vector<CropTap<acc_t>> col_taps(static_cast<size_t>(crops * p.out_w));
    at::parallel_for(0, crops, std::max<int64_t>(1, 4096 / p.out_w), [&](int64_t begin, int64_t end) {
      for (int64_t bn = begin; bn < end; ++bn) {
        const Box box = crop_source_box(p.boxes, bn, p.H, p.W);
        const bool flipped = crop_flipped(p, bn);
        for (int64_t x = 0; x < p.out_w; ++x) {
          col_taps[bn * p.out_w + x] = crop_col_tap<acc_t>(x, flipped, box.width, p.out_w);
        }
      }
    });
    const int64_t grain = std::max<int64_t>(1, 32768 / (p.C * p.out_w));
    at::parallel_for(0, crops * p.out_h, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        multi_crop_row<kC>(p, row, col_taps.data() + (row / p.out_h) * p.out_w);
      }
    });
  }

  template <typename g_t>
  void backward(const MultiCropBackwardParams<g_t>& p) const {
    // One chunk = whole (b, c) planes of grad_images: the N crops of image b scatter only there.
    at::parallel_for(0, p.B * p.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / p.C;
        for (int64_t n = 0; n < p.N; ++n) {
          multi_crop_plane_backward(p, b * p.N + n, bc % p.C);
        }
      }
    });
  }
};

at::Tensor multi_crop_cpu(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                          std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                          const std::optional<at::Tensor>& flip, at::ScalarType out_dtype) {
  check_multi_crop_args(images, boxes, size, mean, std, flip, out_dtype);
  return multi_crop_forward(MultiCropCpu{}, images, boxes, size, mean, std, flip, out_dtype);
}

at::Tensor multi_crop_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes,
                                   std::optional<at::ArrayRef<double>> std, const std::optional<at::Tensor>& flip,
                                   int64_t height, int64_t width) {
  check_multi_crop_backward_args(grad, boxes, std, flip, height, width);
  return multi_crop_backward(MultiCropCpu{}, grad, boxes, std, flip, height, width);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("multi_crop", &multi_crop_cpu);
  m.impl("_multi_crop_backward", &multi_crop_backward_cpu);
}

}  // namespace lmcl
