// lmcl::multi_crop — schema and the host-side pieces both backends share: argument checks, the
// per-channel affine (uint8 scale, mean, std) and the message for a box outside its image.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "kernels/multi_crop.h"

#include <array>
#include <optional>

// Dispatch over the output (or gradient) dtypes multi_crop supports: float32, float16, bfloat16.
#define LMCL_DISPATCH_MULTI_CROP_OUT(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)         \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)          \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace lmcl {

// Metadata rules of SPEC §1.1 (dtype, rank, C, boxes/flip shape and dtype, mean/std length, std != 0,
// out_dtype, device match, size). Mirrored by torch._check in the fake (lmcl_fast/ops.py).
void check_multi_crop_args(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                           const std::optional<at::ArrayRef<double>>& mean,
                           const std::optional<at::ArrayRef<double>>& std,
                           const std::optional<at::Tensor>& flip, at::ScalarType out_dtype);

// Rules of _multi_crop_backward (grad [B, N, C, S_h, S_w], boxes, flip, std, image height/width).
void check_multi_crop_backward_args(const at::Tensor& grad, const at::Tensor& boxes,
                                    const std::optional<at::ArrayRef<double>>& std,
                                    const std::optional<at::Tensor>& flip, int64_t height, int64_t width);

// The helpers below are inline (not in multi_crop.cpp) because the grid-runner test builds
// csrc/cuda/multi_crop_launch.h without linking the library.

// Channels of the images: dim 3 for uint8 NHWC, dim 1 for float32 NCHW.
inline int64_t multi_crop_channels(const at::Tensor& images) {
  return images.scalar_type() == at::kByte ? images.size(3) : images.size(1);
}

// Strides of images as (batch, channel, row, column), whatever the memory layout.
inline std::array<int64_t, 4> multi_crop_image_strides(const at::Tensor& images) {
  if (images.scalar_type() == at::kByte) {  // [B, H, W, C]
    return {images.stride(0), images.stride(3), images.stride(1), images.stride(2)};
  }
  return {images.stride(0), images.stride(1), images.stride(2), images.stride(3)};  // [B, C, H, W]
}

// out = raw * scale[c] + shift[c] == (raw * in_scale - mean[c]) / std[c], with in_scale = 1/255 for
// uint8 and 1 for float32 images (kept in double; each kernel rounds to its compute type).
struct ChannelAffine {
  std::array<double, 3> scale;
  std::array<double, 3> shift;
};
inline ChannelAffine multi_crop_affine(int64_t channels, double in_scale,
                                       const std::optional<at::ArrayRef<double>>& mean,
                                       const std::optional<at::ArrayRef<double>>& std) {
  ChannelAffine affine{{0.0, 0.0, 0.0}, {0.0, 0.0, 0.0}};
  for (int64_t c = 0; c < channels; ++c) {
    const double m = mean.has_value() ? (*mean)[c] : 0.0;
    const double s = std.has_value() ? (*std)[c] : 1.0;
    affine.scale[c] = in_scale / s;
    affine.shift[c] = -m / s;
  }
  return affine;
}

// Throws the ValueError for box (b, n) = (top, left, height, width) outside an H x W image.
[[noreturn]] inline void fail_multi_crop_box(int64_t b, int64_t n, int64_t top, int64_t left, int64_t height,
                                             int64_t width, int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(false, "multi_crop: boxes must lie inside the image (top >= 0, left >= 0, top + height <= H, "
                    "left + width <= W) with height, width >= 1; boxes[", b, ", ", n,
                    "] = (top, left, height, width) = (", top, ", ", left, ", ", height, ", ", width,
                    ") for an image of H x W = ", H, " x ", W);
}

// Kernel parameters from tensors (boxes64: int64 contiguous [B, N, 4]; out / grad_images allocated by the
// caller), shared by the CPU kernel and the CUDA launcher so both see the same strides and constants.
template <typename in_t, typename out_t>
MultiCropParams<in_t, out_t> make_multi_crop_params(const at::Tensor& images, const at::Tensor& boxes64,
                                                    const std::optional<at::Tensor>& flip,
                                                    const ChannelAffine& affine, at::Tensor& out) {
  const bool u8 = images.scalar_type() == at::kByte;
  const auto strides = multi_crop_image_strides(images);
  MultiCropParams<in_t, out_t> p{};
  p.images = images.data_ptr<in_t>();
  p.s_b = strides[0];
  p.s_c = strides[1];
  p.s_y = strides[2];
  p.s_x = strides[3];
  p.B = out.size(0);
  p.N = out.size(1);
  p.C = out.size(2);
  p.H = u8 ? images.size(1) : images.size(2);
  p.W = u8 ? images.size(2) : images.size(3);
  p.boxes = boxes64.data_ptr<int64_t>();
  p.flip = flip.has_value() ? flip->data_ptr<bool>() : nullptr;
  p.flip_sb = flip.has_value() ? flip->stride(0) : 0;
  p.flip_sn = flip.has_value() ? flip->stride(1) : 0;
  p.out = out.data_ptr<out_t>();
  p.out_h = out.size(3);
  p.out_w = out.size(4);
  for (int c = 0; c < 3; ++c) {
    p.scale[c] = static_cast<typename MultiCropParams<in_t, out_t>::acc_t>(affine.scale[c]);
    p.shift[c] = static_cast<typename MultiCropParams<in_t, out_t>::acc_t>(affine.shift[c]);
  }
  return p;
}

template <typename g_t>
MultiCropBackwardParams<g_t> make_multi_crop_backward_params(const at::Tensor& grad, const at::Tensor& boxes64,
                                                             const std::optional<at::Tensor>& flip,
                                                             const ChannelAffine& affine, at::Tensor& grad_images) {
  MultiCropBackwardParams<g_t> p{};
  p.grad = grad.data_ptr<g_t>();
  p.B = grad.size(0);
  p.N = grad.size(1);
  p.C = grad.size(2);
  p.H = grad_images.size(2);
  p.W = grad_images.size(3);
  p.boxes = boxes64.data_ptr<int64_t>();
  p.flip = flip.has_value() ? flip->data_ptr<bool>() : nullptr;
  p.flip_sb = flip.has_value() ? flip->stride(0) : 0;
  p.flip_sn = flip.has_value() ? flip->stride(1) : 0;
  p.grad_images = grad_images.data_ptr<float>();
  p.out_h = grad.size(3);
  p.out_w = grad.size(4);
  for (int c = 0; c < 3; ++c) {
    p.scale[c] = static_cast<float>(affine.scale[c]);
  }
  return p;
}

// The CPU prologue check: every box inside the image with height, width >= 1 (boxes: int64, contiguous).
void check_multi_crop_boxes_cpu(const at::Tensor& boxes64, int64_t H, int64_t W);

}  // namespace lmcl
