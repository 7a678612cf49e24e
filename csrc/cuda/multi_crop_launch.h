// Host side of the CUDA multi_crop launch, kept free of the CUDA API so the grid-runner test
// (python_tests/grid_runner/multi_crop_grid.cpp) runs exactly this code on CPU tensors: the box check,
// output allocation, tensor -> Params, the launch configuration and the dtype dispatch. The caller
// supplies the launcher (launch_grid on the GPU, run_grid_on_host in the test).
#pragma once

#include <ATen/ATen.h>

#include "kernels/multi_crop.h"
#include "ops/multi_crop.h"

namespace lmcl {

// First box outside its image, as [any_bad, index, top, left, height, width], computed on the boxes'
// device with ATen ops so the caller reads it back with a single device -> host copy.
inline at::Tensor multi_crop_box_report(const at::Tensor& boxes64, int64_t H, int64_t W) {
  const at::Tensor flat = boxes64.reshape({-1, 4});
  const at::Tensor t = flat.select(1, 0), l = flat.select(1, 1), h = flat.select(1, 2), w = flat.select(1, 3);
  const at::Tensor bad = (t < 0).logical_or_(l < 0).logical_or_(h < 1).logical_or_(w < 1)
                             .logical_or_(t > H - h).logical_or_(l > W - w);
  const at::Tensor index = bad.to(at::kByte).argmax();  // first maximal entry, 0 when none is bad
  const at::Tensor first = flat.index_select(0, index.reshape({1})).reshape({4});
  return at::cat({bad.any().to(at::kLong).reshape({1}), index.reshape({1}), first});
}

// The one device -> host read of a call: raise the ValueError for the first bad box, if any.
inline void check_multi_crop_boxes_on_device(const at::Tensor& boxes64, int64_t H, int64_t W) {
  if (boxes64.numel() == 0) {
    return;
  }
  const at::Tensor report = multi_crop_box_report(boxes64, H, W).cpu();
  const int64_t* r = report.data_ptr<int64_t>();
  if (r[0] != 0) {
    const int64_t N = boxes64.size(1);
    fail_multi_crop_box(r[1] / N, r[1] % N, r[2], r[3], r[4], r[5], H, W);
  }
}

inline LaunchConfig multi_crop_launch_config(int64_t items, int64_t threads, int64_t max_blocks) {
  return grid_stride_config(items, threads, max_blocks);
}

template <int kC, typename in_t, typename out_t, typename Launcher>
void launch_multi_crop_typed(const at::Tensor& images, const at::Tensor& boxes64, const std::optional<at::Tensor>& flip,
                             const ChannelAffine& affine, at::Tensor& out, const Launcher& launcher, int64_t threads,
                             int64_t max_blocks) {
  const auto p = make_multi_crop_params<in_t, out_t>(images, boxes64, flip, affine, out);
  launcher(MultiCropBody<kC, in_t, out_t>{}, p, multi_crop_launch_config(out.numel() / p.C, threads, max_blocks));
}

// multi_crop through a grid launcher, after check_multi_crop_args (the caller's): one device -> host read
// (the box check), one launch.
template <typename Launcher>
at::Tensor multi_crop_grid(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                           const std::optional<at::ArrayRef<double>>& mean,
                           const std::optional<at::ArrayRef<double>>& std, const std::optional<at::Tensor>& flip,
                           at::ScalarType out_dtype, const Launcher& launcher, int64_t threads, int64_t max_blocks) {
  const bool u8 = images.scalar_type() == at::kByte;
  const int64_t C = multi_crop_channels(images);
  const int64_t H = u8 ? images.size(1) : images.size(2);
  const int64_t W = u8 ? images.size(2) : images.size(3);
  at::Tensor out = at::empty({boxes.size(0), boxes.size(1), C, size[0], size[1]}, images.options().dtype(out_dtype));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor boxes64 = boxes.to(at::kLong).contiguous();  // [B, N, 4]: a few bytes per crop
  check_multi_crop_boxes_on_device(boxes64, H, W);
  const ChannelAffine affine = multi_crop_affine(C, u8 ? 1.0 / 255.0 : 1.0, mean, std);
  LMCL_DISPATCH_MULTI_CROP_OUT(out_dtype, "lmcl::multi_crop_cuda", [&] {
    using out_t = scalar_t;
    if (u8) {
      if (C == 3) {
        launch_multi_crop_typed<3, uint8_t, out_t>(images, boxes64, flip, affine, out, launcher, threads, max_blocks);
      } else {
        launch_multi_crop_typed<1, uint8_t, out_t>(images, boxes64, flip, affine, out, launcher, threads, max_blocks);
      }
    } else {
      if (C == 3) {
        launch_multi_crop_typed<3, float, out_t>(images, boxes64, flip, affine, out, launcher, threads, max_blocks);
      } else {
        launch_multi_crop_typed<1, float, out_t>(images, boxes64, flip, affine, out, launcher, threads, max_blocks);
      }
    }
  });
  return out;
}

// _multi_crop_backward through a grid launcher, after check_multi_crop_backward_args (the caller's):
// float32 [B, C, H, W] gradient of the images.
template <typename Launcher>
at::Tensor multi_crop_backward_grid(const at::Tensor& grad, const at::Tensor& boxes,
                                    const std::optional<at::ArrayRef<double>>& std,
                                    const std::optional<at::Tensor>& flip, int64_t height, int64_t width,
                                    const Launcher& launcher, int64_t threads, int64_t max_blocks) {
  const int64_t C = grad.size(2);
  at::Tensor grad_images = at::zeros({grad.size(0), C, height, width}, grad.options().dtype(at::kFloat));
  if (grad.numel() == 0 || grad_images.numel() == 0) {
    return grad_images;
  }
  const at::Tensor boxes64 = boxes.to(at::kLong).contiguous();
  check_multi_crop_boxes_on_device(boxes64, height, width);
  const at::Tensor g = grad.contiguous();  // autograd hands over a contiguous gradient; this is a no-op then
  const ChannelAffine affine = multi_crop_affine(C, 1.0, std::nullopt, std);
  LMCL_DISPATCH_MULTI_CROP_OUT(g.scalar_type(), "lmcl::_multi_crop_backward_cuda", [&] {
    const auto p = make_multi_crop_backward_params<scalar_t>(g, boxes64, flip, affine, grad_images);
    launcher(MultiCropBackwardBody<scalar_t>{}, p, multi_crop_launch_config(g.numel() / C, threads, max_blocks));
  });
  return grad_images;
}

}  // namespace lmcl
