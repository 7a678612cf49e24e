// CPU kernels of lmcl::multi_crop and lmcl::_multi_crop_backward: at::parallel_for over the math in
// kernels/multi_crop.h. Forward: one chunk = a run of output rows; backward: one chunk = whole image
// planes (b, c), so every thread owns what it writes and the result is bit-reproducible.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "kernels/multi_crop.h"
#include "ops/multi_crop.h"

namespace lmcl {

namespace {

template <int kC, typename in_t, typename out_t>
void multi_crop_cpu_typed(const at::Tensor& images, const at::Tensor& boxes64, const std::optional<at::Tensor>& flip,
                          const ChannelAffine& affine, at::Tensor& out) {
  const auto p = make_multi_crop_params<in_t, out_t>(images, boxes64, flip, affine, out);
  const int64_t crops = p.B * p.N;
  // Column taps once per crop (torchvision roi_align_common.h style), reused by every row and channel.
  using acc_t = typename MultiCropParams<in_t, out_t>::acc_t;
  std::vector<CropTap<acc_t>> col_taps(static_cast<size_t>(crops * p.out_w));
  at::parallel_for(0, crops, std::max<int64_t>(1, 4096 / p.out_w), [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const CropBox box = load_box(p.boxes, bn, p.H, p.W);
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

at::Tensor multi_crop_cpu(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                          std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                          const std::optional<at::Tensor>& flip, at::ScalarType out_dtype) {
  check_multi_crop_args(images, boxes, size, mean, std, flip, out_dtype);
  const bool u8 = images.scalar_type() == at::kByte;
  const int64_t C = multi_crop_channels(images);
  const int64_t H = u8 ? images.size(1) : images.size(2);
  const int64_t W = u8 ? images.size(2) : images.size(3);
  at::Tensor out = at::empty({boxes.size(0), boxes.size(1), C, size[0], size[1]}, images.options().dtype(out_dtype));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor boxes64 = boxes.to(at::kLong).contiguous();  // [B, N, 4]: a few bytes per crop
  check_multi_crop_boxes_cpu(boxes64, H, W);
  const ChannelAffine affine = multi_crop_affine(C, u8 ? 1.0 / 255.0 : 1.0, mean, std);
  LMCL_DISPATCH_MULTI_CROP_OUT(out_dtype, "lmcl::multi_crop_cpu", [&] {
    using out_t = scalar_t;
    if (u8) {
      if (C == 3) {
        multi_crop_cpu_typed<3, uint8_t, out_t>(images, boxes64, flip, affine, out);
      } else {
        multi_crop_cpu_typed<1, uint8_t, out_t>(images, boxes64, flip, affine, out);
      }
    } else {
      if (C == 3) {
        multi_crop_cpu_typed<3, float, out_t>(images, boxes64, flip, affine, out);
      } else {
        multi_crop_cpu_typed<1, float, out_t>(images, boxes64, flip, affine, out);
      }
    }
  });
  return out;
}

at::Tensor multi_crop_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes,
                                   std::optional<at::ArrayRef<double>> std, const std::optional<at::Tensor>& flip,
                                   int64_t height, int64_t width) {
  check_multi_crop_backward_args(grad, boxes, std, flip, height, width);
  const int64_t C = grad.size(2);
  at::Tensor grad_images = at::zeros({grad.size(0), C, height, width}, grad.options().dtype(at::kFloat));
  if (grad.numel() == 0 || grad_images.numel() == 0) {
    return grad_images;
  }
  const at::Tensor boxes64 = boxes.to(at::kLong).contiguous();
  check_multi_crop_boxes_cpu(boxes64, height, width);
  const at::Tensor g = grad.contiguous();  // autograd hands over a contiguous gradient; this is a no-op then
  const ChannelAffine affine = multi_crop_affine(C, 1.0, std::nullopt, std);
  LMCL_DISPATCH_MULTI_CROP_OUT(g.scalar_type(), "lmcl::_multi_crop_backward_cpu", [&] {
    const auto p = make_multi_crop_backward_params<scalar_t>(g, boxes64, flip, affine, grad_images);
    // One chunk = whole (b, c) planes of grad_images: the N crops of image b scatter only there.
    at::parallel_for(0, p.B * p.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / p.C;
        for (int64_t n = 0; n < p.N; ++n) {
          multi_crop_plane_backward(p, b * p.N + n, bc % p.C);
        }
      }
    });
  });
  return grad_images;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmcl, CPU, m) {
  m.impl("multi_crop", &multi_crop_cpu);
  m.impl("_multi_crop_backward", &multi_crop_backward_cpu);
}

}  // namespace lmcl
