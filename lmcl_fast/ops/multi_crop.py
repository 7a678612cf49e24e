"""multi_crop: the public wrapper, its fake kernel (mirroring csrc/ops/multi_crop.cpp) and its autograd."""
from __future__ import annotations

import math

import torch

from .. import _C  # noqa: F401  (the schemas must be registered before register_fake below)
from ._boxes import check_boxes_arg_fake, check_boxes_match_fake

_MULTI_CROP_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _crop_size(size) -> list:
    if isinstance(size, (int, torch.SymInt)):
        return [size, size]
    size = list(size)
    if len(size) != 2:
        raise ValueError(f"multi_crop: size must be an int or (S_h, S_w), got {size!r}")
    return size


def _channel_values(values):
    return None if values is None else [float(v) for v in values]


def multi_crop(images, boxes, size, mean=None, std=None, flip=None, out_dtype=torch.float32):
    """Crop, resize (bilinear), optionally mirror and normalise many boxes per image in one pass.

    Args:
        images: uint8 ``[B, H, W, C]`` (as decoders return it; read as value / 255) or float32
            ``[B, C, H, W]`` (used as given); C is 1 or 3. Any strides (channels-last float, slices) are
            read through their strides, never copied.
        boxes: int32/int64 ``[B, N, 4]`` rows ``(top, left, height, width)`` inside the image, h, w >= 1.
        size: int or ``(S_h, S_w)``.
        mean, std: per-channel sequences (0..1 scale) or None (0 and 1).
        flip: optional bool ``[B, N]``: mirror that crop left-right.
        out_dtype: float32, float16 or bfloat16.

    Returns:
        ``[B, N, C, S_h, S_w]`` of ``out_dtype``: ``F.interpolate(crop, size, mode="bilinear",
        align_corners=False, antialias=False)``, flipped where asked, then ``(v - mean[c]) / std[c]``.
        Differentiable with respect to float32 images.

    Example:
        >>> imgs = torch.randint(0, 256, (2, 64, 80, 3), dtype=torch.uint8)
        >>> boxes = torch.tensor([[[0, 0, 64, 64], [10, 20, 32, 48]]] * 2)
        >>> multi_crop(imgs, boxes, 32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).shape
        torch.Size([2, 2, 3, 32, 32])
    """
    return torch.ops.lmcl.multi_crop.default(
        images, boxes, _crop_size(size), _channel_values(mean), _channel_values(std), flip, out_dtype
    )


def _check_boxes_and_flip_fake(op, boxes, flip, batch, device, source):
    check_boxes_arg_fake(op, boxes)
    check_boxes_match_fake(op, boxes, batch, device, source)
    if flip is not None:
        torch._check_type(flip.dtype == torch.bool, lambda: f"{op}: flip must be a bool tensor, got {flip.dtype}")
        torch._check(flip.dim() == 2 and flip.shape[0] == batch and flip.shape[1] == boxes.shape[1],
                     lambda: f"{op}: flip must have shape [B, N] = [{batch}, {boxes.shape[1]}], "
                             f"got {tuple(flip.shape)}")
        torch._check(flip.device == device,
                     lambda: f"{op}: flip must be on the device of {source} ({device}), got {flip.device}")


def _check_channel_values_fake(op, name, values, channels):
    if values is not None:
        torch._check_value(len(values) == channels, lambda: (
            f"{op}: {name} must have one value per channel (C = {channels}), got {len(values)} values"))
        for c, v in enumerate(values):
            torch._check_value(math.isfinite(v), lambda: (
                f"{op}: {name} must be finite for every channel, got {name}[{c}] = {v}"))


def _check_std_fake(op, std):
    for c, s in enumerate(std or ()):
        torch._check_value(s != 0.0, lambda: f"{op}: std must be non-zero for every channel, got std[{c}] = {s}")


@torch.library.register_fake("lmcl::multi_crop")
def _multi_crop_fake(images, boxes, size, mean, std, flip, out_dtype):
    op = "multi_crop"
    torch._check_type(images.dtype in (torch.uint8, torch.float32), lambda: (
        f"{op}: images must be uint8 [B, H, W, C] or float32 [B, C, H, W], got {images.dtype}"))
    torch._check(images.dim() == 4, lambda: (
        f"{op}: images must be 4-D (uint8 [B, H, W, C] or float32 [B, C, H, W]), got {images.dim()}-D "
        f"with shape {tuple(images.shape)}"))
    channels = images.shape[3] if images.dtype == torch.uint8 else images.shape[1]
    torch._check(channels in (1, 3),
                 lambda: f"{op}: images must have C = 1 or 3 channels (dim {3 if images.dtype == torch.uint8 else 1} "
                         f"for {images.dtype}), got shape {tuple(images.shape)}")
    _check_boxes_and_flip_fake(op, boxes, flip, images.shape[0], images.device, "images")
    torch._check(len(size) == 2, lambda: f"{op}: size must be (S_h, S_w), got {size}")
    torch._check_value(size[0] >= 1 and size[1] >= 1, lambda: f"{op}: size must be positive, got {size}")
    _check_channel_values_fake(op, "mean", mean, channels)
    _check_channel_values_fake(op, "std", std, channels)
    _check_std_fake(op, std)
    torch._check_type(out_dtype in _MULTI_CROP_OUT_DTYPES,
                      lambda: f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    return images.new_empty((boxes.shape[0], boxes.shape[1], channels, size[0], size[1]), dtype=out_dtype)


@torch.library.register_fake("lmcl::_multi_crop_backward")
def _multi_crop_backward_fake(grad, boxes, std, flip, height, width):
    op = "_multi_crop_backward"
    torch._check_type(grad.dtype in _MULTI_CROP_OUT_DTYPES,
                      lambda: f"{op}: grad must be float32, float16 or bfloat16, got {grad.dtype}")
    torch._check(grad.dim() == 5 and grad.shape[2] in (1, 3), lambda: (
        f"{op}: grad must have shape [B, N, C, S_h, S_w] with C = 1 or 3, got {tuple(grad.shape)}"))
    _check_boxes_and_flip_fake(op, boxes, flip, grad.shape[0], grad.device, "grad")
    torch._check(boxes.shape[1] == grad.shape[1],
                 lambda: f"{op}: boxes must have N = {grad.shape[1]} boxes per image, got {tuple(boxes.shape)}")
    torch._check_value(height >= 0 and width >= 0,
                       lambda: f"{op}: height and width must be non-negative, got {height} x {width}")
    _check_channel_values_fake(op, "std", std, grad.shape[2])
    _check_std_fake(op, std)
    return grad.new_empty((grad.shape[0], grad.shape[2], height, width), dtype=torch.float32)


def _multi_crop_setup_context(ctx, inputs, output):
    images, boxes, size, _mean, std, flip, _out_dtype = inputs
    ctx.save_for_backward(boxes, flip)
    ctx.std = std
    ctx.image_hw = (images.shape[2], images.shape[3])  # float images are [B, C, H, W]


def _multi_crop_backward(ctx, grad):
    boxes, flip = ctx.saved_tensors
    grad_images = None
    if ctx.needs_input_grad[0]:
        grad_images = torch.ops.lmcl._multi_crop_backward.default(grad, boxes, ctx.std, flip, *ctx.image_hw)
    return grad_images, None, None, None, None, None, None


def _multi_crop_backward_setup_context(ctx, inputs, output):
    grad, boxes, std, flip, _height, _width = inputs
    ctx.save_for_backward(boxes, flip)
    ctx.std = std
    ctx.grad_size = (grad.shape[3], grad.shape[4])
    ctx.grad_dtype = grad.dtype


def _multi_crop_double_backward(ctx, grad_grad_images):
    # _multi_crop_backward is linear in grad; its adjoint is the forward resample with mean 0.
    boxes, flip = ctx.saved_tensors
    grad_grad = None
    if ctx.needs_input_grad[0]:
        grad_grad = torch.ops.lmcl.multi_crop.default(
            grad_grad_images, boxes, list(ctx.grad_size), None, ctx.std, flip, ctx.grad_dtype)
    return grad_grad, None, None, None, None, None


torch.library.register_autograd("lmcl::multi_crop", _multi_crop_backward, setup_context=_multi_crop_setup_context)
torch.library.register_autograd(
    "lmcl::_multi_crop_backward", _multi_crop_double_backward, setup_context=_multi_crop_backward_setup_context)
