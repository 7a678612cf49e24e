// Grid-runner ops (torch.ops.lmcl_grid) for multi_crop, run with HostGridLauncher.
// The CUDA entries' host code (csrc/host/multi_crop.h on the grid
// backend: the box-check launch, Params, launches) with HostGridLauncher in place of CudaGridLauncher.
// The argument checks live in the library, not linked here, so tests pass valid metadata. `threads` and
// `max_blocks` let tests shrink the grid so the grid-stride loop wraps.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "grid_runner.h"
#include "host/multi_crop.h"

namespace {

lmcl::MultiCropGrid<lmcl::HostGridLauncher> backend(int64_t threads, int64_t max_blocks) {
  return {lmcl::HostGridLauncher{lmcl::GridShape{threads, max_blocks}}};
}

at::Tensor multi_crop_grid(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size,
                           std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std,
                           const std::optional<at::Tensor>& flip, at::ScalarType out_dtype, int64_t threads,
                           int64_t max_blocks, std::optional<at::MemoryFormat> memory_format) {
  return lmcl::multi_crop_forward(backend(threads, max_blocks), images, boxes, size, mean, std, flip, out_dtype,
                                  memory_format);
}

at::Tensor multi_crop_backward_grid(const at::Tensor& grad, const at::Tensor& boxes,
                                   std::optional<at::ArrayRef<double>> std, const std::optional<at::Tensor>& flip,
                                   int64_t height, int64_t width, int64_t threads, int64_t max_blocks) {
  return lmcl::multi_crop_backward(backend(threads, max_blocks), grad, boxes, std, flip, height, width);
}

// The forward Body with the box check skipped (uint8 NHWC, C = 3, float32 output): shows that the
// kernel's own clamping keeps every read inside the image whatever the boxes hold.
at::Tensor multi_crop_unchecked_grid(const at::Tensor& images, const at::Tensor& boxes, at::IntArrayRef size) {
  at::Tensor out = at::empty({boxes.size(0), boxes.size(1), 3, size[0], size[1]}, images.options().dtype(at::kFloat));
  const at::Tensor boxes64 = boxes.to(at::kLong).contiguous();
  const auto affine = lmcl::multi_crop_affine(3, 1.0 / 255.0, std::nullopt, std::nullopt);
  backend(64, 4).forward<3>(lmcl::make_multi_crop_params<uint8_t, float>(images, boxes64, std::nullopt, affine, out));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmcl_grid, m) {
  m.def("multi_crop_unchecked(Tensor images, Tensor boxes, int[] size) -> Tensor");
  m.def(
      "multi_crop(Tensor images, Tensor boxes, int[] size, float[]? mean, float[]? std, Tensor? flip, "
      "ScalarType out_dtype, int threads, int max_blocks, MemoryFormat? memory_format=None) -> Tensor");
  m.def(
      "multi_crop_backward(Tensor grad, Tensor boxes, float[]? std, Tensor? flip, int height, int width, "
      "int threads, int max_blocks) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmcl_grid, CPU, m) {
  m.impl("multi_crop", &multi_crop_grid);
  m.impl("multi_crop_backward", &multi_crop_backward_grid);
  m.impl("multi_crop_unchecked", &multi_crop_unchecked_grid);
}
