// multi_crop host setup for every backend and the grid runner: Params, affine, entries over a backend.
// Output allocation, the per-channel affine, tensors -> Params, the box check and the dtype ladder, as entry
// templates over a backend (MultiCropGrid below; MultiCropCpu in csrc/cpu/multi_crop_cpu.cpp). A backend has
// check_boxes(op, boxes64, H, W), forward<kC, in_t, out_t>(params) and backward<g_t>(params).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <array>
#include <optional>

#include "host/boxes.h"
#include "kernels/multi_crop.h"

// Dispatch over the output (or gradient) dtypes multi_crop supports: float32, float16, bfloat16.
#define LMCL_DISPATCH_MULTI_CROP_OUT(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)         \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)          \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace lmcl {

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

// Kernel parameters from tensors (boxes64: int64 contiguous [B, N, 4]; out allocated by the caller).
// The box and flip tables of a launch (no flip tensor: no crop is mirrored), for the forward and backward params.
template <typename Params>
void set_box_table(Params& p, const at::Tensor& boxes64, const std::optional<at::Tensor>& flip) {
  p.boxes = boxes64.data_ptr<int64_t>();
  p.flip = flip.has_value() ? flip->data_ptr<bool>() : nullptr;
  p.flip_sb = flip.has_value() ? flip->stride(0) : 0;
  p.flip_sn = flip.has_value() ? flip->stride(1) : 0;
}

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
  set_box_table(p, boxes64, flip);
  p.out = out.data_ptr<out_t>();
  // Both layouts of multi_crop_output keep a crop's elements together: stride(0) == N * stride(1).
  p.o_sn = out.stride(1);
  p.o_sc = out.stride(2);
  p.o_sy = out.stride(3);
  p.o_sx = out.stride(4);
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
  p.g_sb = grad.stride(0);
  p.g_sn = grad.stride(1);
  p.g_sc = grad.stride(2);
  p.g_sy = grad.stride(3);
  p.g_sx = grad.stride(4);
  p.B = grad.size(0);
  p.N = grad.size(1);
  p.C = grad.size(2);
  p.H = grad_images.size(2);
  p.W = grad_images.size(3);
  set_box_table(p, boxes64, flip);
  p.grad_images = grad_images.data_ptr<float>();
  p.out_h = grad.size(3);
  p.out_w = grad.size(4);
  for (int c = 0; c < 3; ++c) {
    p.scale[c] = static_cast<float>(affine.scale[c]);
  }
  return p;
}

// The output [B, N, C, S_h, S_w]: contiguous, or (channels_last) a view of contiguous [B, N, S_h, S_w, C]
// memory, so that out.flatten(0, 1) is a channels-last [B * N, C, S_h, S_w] batch.
inline at::Tensor multi_crop_output(int64_t B, int64_t N, int64_t C, at::IntArrayRef size,
                                    const at::TensorOptions& options,
                                    const std::optional<at::MemoryFormat>& memory_format) {
  if (memory_format == at::MemoryFormat::ChannelsLast) {
    return at::empty({B, N, size[0], size[1], C}, options).permute({0, 1, 4, 2, 3});
  }
  return at::empty({B, N, C, size[0], size[1]}, options);
}

// lmcl::multi_crop on a backend, after check_multi_crop_args: output, box check, affine, then one
// backend.forward per (channels, input dtype, output dtype).
template <typename Backend>
at::Tensor multi_crop_forward(const Backend& backend, const at::Tensor& images, const at::Tensor& boxes,
                              at::IntArrayRef size, const std::optional<at::ArrayRef<double>>& mean,
                              const std::optional<at::ArrayRef<double>>& std, const std::optional<at::Tensor>& flip,
                              at::ScalarType out_dtype, const std::optional<at::MemoryFormat>& memory_format) {
  const bool u8 = images.scalar_type() == at::kByte;
  const int64_t C = multi_crop_channels(images);
  const int64_t H = u8 ? images.size(1) : images.size(2);
  const int64_t W = u8 ? images.size(2) : images.size(3);
  at::Tensor out = multi_crop_output(boxes.size(0), boxes.size(1), C, size, images.options().dtype(out_dtype),
                                     memory_format);
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor boxes64 = boxes.to(at::kLong).contiguous();  // [B, N, 4]: a few bytes per crop
  backend.check_boxes("multi_crop", boxes64, H, W);
  const ChannelAffine affine = multi_crop_affine(C, u8 ? 1.0 / 255.0 : 1.0, mean, std);
  LMCL_DISPATCH_MULTI_CROP_OUT(out_dtype, "lmcl::multi_crop", [&] {
    using out_t = scalar_t;
    if (u8) {
      const auto p = make_multi_crop_params<uint8_t, out_t>(images, boxes64, flip, affine, out);
      C == 3 ? backend.template forward<3>(p) : backend.template forward<1>(p);
    } else {
      const auto p = make_multi_crop_params<float, out_t>(images, boxes64, flip, affine, out);
      C == 3 ? backend.template forward<3>(p) : backend.template forward<1>(p);
    }
  });
  return out;
}

// lmcl::_multi_crop_backward on a backend, after check_multi_crop_backward_args: float32 [B, C, H, W]
// gradient of the images.
template <typename Backend>
at::Tensor multi_crop_backward(const Backend& backend, const at::Tensor& grad, const at::Tensor& boxes,
                               const std::optional<at::ArrayRef<double>>& std, const std::optional<at::Tensor>& flip,
                               int64_t height, int64_t width) {
  const int64_t C = grad.size(2);
  at::Tensor grad_images = at::zeros({grad.size(0), C, height, width}, grad.options().dtype(at::kFloat));
  if (grad.numel() == 0 || grad_images.numel() == 0) {
    return grad_images;
  }
  const at::Tensor boxes64 = boxes.to(at::kLong).contiguous();
  backend.check_boxes("_multi_crop_backward", boxes64, height, width);
  const ChannelAffine affine = multi_crop_affine(C, 1.0, std::nullopt, std);
  // grad is read through its strides (channels-last crops hand back an NHWC-ordered gradient): no copy.
  LMCL_DISPATCH_MULTI_CROP_OUT(grad.scalar_type(), "lmcl::_multi_crop_backward", [&] {
    backend.backward(make_multi_crop_backward_params<scalar_t>(grad, boxes64, flip, affine, grad_images));
  });
  return grad_images;
}

// The grid backend (CUDA entry, grid runner): the box check is one launch of device-side asserts (no
// device->host read); forward and backward are one launch each, one thread per output pixel.
template <typename Launcher>
struct MultiCropGrid {
  Launcher launcher;

  void check_boxes(const char* op, const at::Tensor& boxes64, int64_t H, int64_t W) const {
    check_boxes_on_device(op, boxes64, H, W, launcher);
  }

  template <int kC, typename in_t, typename out_t>
  void forward(const MultiCropParams<in_t, out_t>& p) const {
    launcher(MultiCropBody<kC, in_t, out_t>{}, p, p.B * p.N * p.out_h * p.out_w);
  }

  template <typename g_t>
  void backward(const MultiCropBackwardParams<g_t>& p) const {
    launcher(MultiCropBackwardBody<g_t>{}, p, p.B * p.N * p.out_h * p.out_w);
  }
};

}  // namespace lmcl
