"""Public API of the lmcl ops.

Each section holds one op: its thin wrapper (argument normalisation only, then
`torch.ops.lmcl.<op>.default`), its fake (meta) kernel for torch.compile, and its autograd formula.
Value checks that read tensor data live in C++, so the wrappers stay traceable with fullgraph=True.
"""
from __future__ import annotations

import math

import torch

from . import _C  # noqa: F401  (the schemas must be registered before register_fake below)

__all__: list = []

# ----------------------------------------------------------------------------------------------------
# multi_crop, sample_boxes
# ----------------------------------------------------------------------------------------------------

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


def _check_multi_crop_boxes_fake(op, boxes, flip, batch, device):
    torch._check_type(boxes.dtype in (torch.int32, torch.int64),
                      lambda: f"{op}: boxes must be int32 or int64, got {boxes.dtype}")
    torch._check(boxes.dim() == 3 and boxes.shape[2] == 4,
                 lambda: f"{op}: boxes must have shape [B, N, 4] (top, left, height, width), got {tuple(boxes.shape)}")
    torch._check(boxes.shape[0] == batch,
                 lambda: f"{op}: boxes must have one row of boxes per image (B = {batch}), got {tuple(boxes.shape)}")
    torch._check(boxes.device == device,
                 lambda: f"{op}: boxes must be on the images' device ({device}), got {boxes.device}")
    if flip is not None:
        torch._check_type(flip.dtype == torch.bool, lambda: f"{op}: flip must be a bool tensor, got {flip.dtype}")
        torch._check(flip.dim() == 2 and flip.shape[0] == batch and flip.shape[1] == boxes.shape[1],
                     lambda: f"{op}: flip must have shape [B, N] = [{batch}, {boxes.shape[1]}], "
                             f"got {tuple(flip.shape)}")
        torch._check(flip.device == device,
                     lambda: f"{op}: flip must be on the images' device ({device}), got {flip.device}")


def _check_channel_values_fake(op, name, values, channels):
    if values is not None:
        torch._check_value(len(values) == channels, lambda: (
            f"{op}: {name} must have one value per channel (C = {channels}), got {len(values)} values"))


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
                 lambda: f"{op}: images must have C = 1 or 3 channels, got shape {tuple(images.shape)}")
    _check_multi_crop_boxes_fake(op, boxes, flip, images.shape[0], images.device)
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
    _check_multi_crop_boxes_fake(op, boxes, flip, grad.shape[0], grad.device)
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


def _as_sizes(values, name) -> torch.Tensor:
    t = torch.as_tensor(values)
    not_int = t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool
    if t.dim() > 1 or (not_int and t.numel() > 0):  # [] becomes float32: an empty batch is fine
        raise ValueError(f"sample_boxes: {name} must be a sequence or 1-D tensor of ints, got {values!r}")
    return t.reshape(-1).to(torch.int64)


def sample_boxes(heights, widths, n, scales=(0.25, 1.0), min_size=32, generator=None):
    """Random multi-scale square boxes for ``multi_crop`` (SPEC §1.2).

    For image b (valid size ``heights[b] x widths[b]``; images may be padded into one batch tensor), ``n``
    square boxes of side ``round(s * min(h, w))`` with ``s ~ U[scales[0], scales[1]]``, clipped to at
    least ``min_size`` and at most ``min(h, w)``, placed uniformly at random inside the image (every
    valid top-left corner equally likely). Same ``generator`` state, same boxes.

    Args:
        heights, widths: ints per image (sequence or 1-D integer tensor, all >= 1).
        n: boxes per image (>= 0).
        scales: ``(low, high)`` with ``0 < low <= high <= 1``.
        min_size: smallest side in pixels (>= 1).
        generator: optional ``torch.Generator`` (its device gives the boxes' device).

    Returns:
        int64 ``[B, n, 4]`` rows ``(top, left, height, width)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> boxes = sample_boxes([384, 480], [512, 320], 4, generator=g)
        >>> boxes.shape, bool((boxes[..., 2] == boxes[..., 3]).all())
        (torch.Size([2, 4, 4]), True)
    """
    h = _as_sizes(heights, "heights")
    w = _as_sizes(widths, "widths")
    if h.numel() != w.numel():
        raise ValueError(f"sample_boxes: heights and widths must have the same length, got {h.numel()} and {w.numel()}")
    if h.numel() and int(torch.minimum(h, w).min()) < 1:
        raise ValueError(f"sample_boxes: heights and widths must be >= 1, got {h.tolist()} and {w.tolist()}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"sample_boxes: n must be a non-negative int, got {n!r}")
    try:
        low, high = (float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"sample_boxes: scales must be a pair (low, high), got {scales!r}") from None
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"sample_boxes: scales must satisfy 0 < low <= high <= 1, got {scales!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"sample_boxes: min_size must be an int >= 1, got {min_size!r}")
    device = generator.device if generator is not None else h.device
    h, w = h.to(device), w.to(device)
    side_max = torch.minimum(h, w)[:, None]  # [B, 1]
    # One draw of [B, n, 3] uniforms (scale, top, left), so a generator state fixes every box.
    u = torch.rand((h.numel(), n, 3), generator=generator, dtype=torch.float64, device=device)
    s = low + (high - low) * u[..., 0]
    side = torch.round(s * side_max).clamp_min(min_size).minimum(side_max).to(torch.int64)
    top = torch.floor(u[..., 1] * (h[:, None] - side + 1)).to(torch.int64)
    left = torch.floor(u[..., 2] * (w[:, None] - side + 1)).to(torch.int64)
    return torch.stack((top, left, side, side), dim=-1)


__all__ += ["multi_crop", "sample_boxes"]


# ----------------------------------------------------------------------------------------------------
# crop_saliency, spectral_residual, select_anchor
# ----------------------------------------------------------------------------------------------------

__all__ += ["crop_saliency", "spectral_residual", "select_anchor"]


def crop_saliency(saliency: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean saliency of every box, from a float64 summed-area table and four look-ups per box.

    Args:
        saliency: float32 ``[B, H, W]`` map (any strides; float64 maps are rejected).
        boxes: int32/int64 ``[B, N, 4]``, rows ``(top, left, height, width)`` inside the image,
            height and width >= 1 (else ValueError naming ``boxes``).

    Returns:
        float32 ``[B, N]``: ``saliency[b, top:top+height, left:left+width].mean()``. Differentiable
        with respect to ``saliency`` (each box spreads ``g / (height * width)`` over its pixels).

    Example:
        >>> s = torch.rand(2, 64, 64)
        >>> boxes = torch.tensor([[[0, 0, 32, 32], [16, 16, 48, 48]]] * 2)
        >>> crop_saliency(s, boxes).shape
        torch.Size([2, 2])
    """
    return torch.ops.lmcl.crop_saliency.default(saliency, boxes)


def _check_boxes_meta(op: str, boxes: torch.Tensor) -> None:
    torch._check_type(
        boxes.dtype in (torch.int32, torch.int64), lambda: f"{op}: boxes must be int32 or int64, got {boxes.dtype}"
    )
    torch._check(
        boxes.dim() == 3 and boxes.shape[2] == 4,
        lambda: f"{op}: boxes must have shape [B, N, 4], got {list(boxes.shape)}",
    )


@torch.library.register_fake("lmcl::crop_saliency")
def _crop_saliency_fake(saliency, boxes):
    torch._check_type(
        saliency.dtype == torch.float32,
        lambda: f"crop_saliency: saliency must be float32 (float64 maps are rejected), got {saliency.dtype}",
    )
    torch._check(
        saliency.dim() == 3, lambda: f"crop_saliency: saliency must have shape [B, H, W], got {list(saliency.shape)}"
    )
    _check_boxes_meta("crop_saliency", boxes)
    torch._check(
        boxes.shape[0] == saliency.shape[0],
        lambda: f"crop_saliency: boxes must have the batch size B = {saliency.shape[0]} of saliency, "
        f"got boxes of shape {list(boxes.shape)}",
    )
    torch._check(
        boxes.device == saliency.device,
        lambda: f"crop_saliency: boxes must be on the device of saliency ({saliency.device}), got {boxes.device}",
    )
    return saliency.new_empty((saliency.shape[0], boxes.shape[1]))


@torch.library.register_fake("lmcl::_crop_saliency_backward")
def _crop_saliency_backward_fake(grad, boxes, H, W):
    torch._check_type(
        grad.dtype == torch.float32, lambda: f"_crop_saliency_backward: grad must be float32, got {grad.dtype}"
    )
    _check_boxes_meta("_crop_saliency_backward", boxes)
    torch._check(
        grad.dim() == 2 and grad.shape[0] == boxes.shape[0] and grad.shape[1] == boxes.shape[1],
        lambda: f"_crop_saliency_backward: grad must have shape [B, N] of boxes, got {list(grad.shape)}",
    )
    torch._check(H >= 0 and W >= 0, lambda: f"_crop_saliency_backward: H and W must be >= 0, got {H}, {W}")
    torch._check(
        boxes.device == grad.device,
        lambda: f"_crop_saliency_backward: boxes must be on the device of grad ({grad.device}), got {boxes.device}",
    )
    return grad.new_empty((boxes.shape[0], H, W))


def _crop_saliency_setup_context(ctx, inputs, output):
    saliency, boxes = inputs
    ctx.save_for_backward(boxes)
    ctx.hw = (saliency.shape[1], saliency.shape[2])


def _crop_saliency_autograd(ctx, grad):
    (boxes,) = ctx.saved_tensors
    return torch.ops.lmcl._crop_saliency_backward.default(grad, boxes, *ctx.hw), None


torch.library.register_autograd(
    "lmcl::crop_saliency", _crop_saliency_autograd, setup_context=_crop_saliency_setup_context
)


# The backward is linear in grad and its adjoint is the forward again, so double backward is exact.
def _crop_saliency_backward_setup_context(ctx, inputs, output):
    _, boxes, _, _ = inputs
    ctx.save_for_backward(boxes)


def _crop_saliency_backward_autograd(ctx, grad_grad):
    (boxes,) = ctx.saved_tensors
    return torch.ops.lmcl.crop_saliency.default(grad_grad, boxes), None, None, None


torch.library.register_autograd(
    "lmcl::_crop_saliency_backward",
    _crop_saliency_backward_autograd,
    setup_context=_crop_saliency_backward_setup_context,
)


def select_anchor(scores: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring crop of every image (ties go to the lowest index).

    Args:
        scores: ``[B, N]`` float32/float16/bfloat16 (float64 also accepted), N >= 1, any strides.

    Returns:
        int64 ``[B]``. A NaN anywhere in ``scores`` raises ValueError naming ``scores`` (checked in C++,
        one device->host read on CUDA).

    Example:
        >>> select_anchor(torch.tensor([[0.1, 0.9, 0.9], [2.0, -1.0, 0.5]]))
        tensor([1, 0])
    """
    return torch.ops.lmcl.select_anchor.default(scores)


@torch.library.register_fake("lmcl::select_anchor")
def _select_anchor_fake(scores):
    torch._check_type(
        scores.dtype.is_floating_point,
        lambda: f"select_anchor: scores must be a floating tensor (float32, float16, bfloat16 or float64), "
        f"got {scores.dtype}",
    )
    torch._check(scores.dim() == 2, lambda: f"select_anchor: scores must have shape [B, N], got {list(scores.shape)}")
    torch._check(
        scores.shape[1] >= 1,
        lambda: f"select_anchor: scores must have at least one crop (N >= 1), got shape {list(scores.shape)}",
    )
    return scores.new_empty((scores.shape[0],), dtype=torch.int64)


# ITU-R BT.601 luma weights for the grey image.
_LUMA = (0.299, 0.587, 0.114)
# Floor for the amplitude spectrum before the log: only exact zeros (a flat image) reach it.
_SR_AMPLITUDE_FLOOR = 1e-8
# Floor for the min-max range in the final [0, 1] scaling (a map with no contrast becomes all zeros).
_SR_RANGE_FLOOR = 1e-12


def spectral_residual(images: torch.Tensor, long_side: int = 64, sigma: float = 2.5) -> torch.Tensor:
    """Spectral-residual saliency map (Hou and Zhang, CVPR 2007): the default map that needs no weights.

    Steps: grey image (BT.601 luma for C = 3); downscale so the long side is ``long_side`` pixels
    (bilinear with antialiasing; smaller images are used as they are); 2-D FFT; the log-amplitude
    spectrum minus its 3x3 local mean (circular padding, as the spectrum is periodic), with the phase
    kept; inverse FFT; squared magnitude; Gaussian blur with ``sigma`` pixels at the downscaled size
    (kernel radius ceil(3 sigma), replicate padding); bilinear resize back to H x W
    (align_corners=False); scaled to [0, 1] per image (min-max, like ``mat2gray``).
    The defaults (64 px, sigma 2.5) and the scaling follow the widely circulated Matlab code of the
    method, which scales the width rather than the long side and pads the 3x3 mean by replication.

    Args:
        images: uint8 ``[B, H, W, C]`` (channels-last) or float32 ``[B, C, H, W]`` (used as given), C = 1 or 3.
        long_side: length in pixels of the long side of the downscaled grey image.
        sigma: standard deviation, in downscaled pixels, of the Gaussian blur.

    Returns:
        float32 ``[B, H, W]`` on the device of ``images``. Plain torch (torch.fft), traceable by
        ``torch.compile(fullgraph=True)``.

    Example:
        >>> imgs = torch.randint(0, 256, (2, 96, 128, 3), dtype=torch.uint8)
        >>> spectral_residual(imgs).shape
        torch.Size([2, 96, 128])
    """
    if images.dtype == torch.uint8:
        if images.dim() != 4:
            raise RuntimeError(
                f"spectral_residual: uint8 images must have shape [B, H, W, C], got {list(images.shape)}"
            )
        # A channels-last view; channels are converted one at a time below (no full float copy).
        x = images.permute(0, 3, 1, 2)
    elif images.dtype == torch.float32:
        if images.dim() != 4:
            raise RuntimeError(
                f"spectral_residual: float32 images must have shape [B, C, H, W], got {list(images.shape)}"
            )
        x = images
    else:
        raise TypeError(
            f"spectral_residual: images must be uint8 [B, H, W, C] or float32 [B, C, H, W], got {images.dtype}"
        )
    if x.shape[1] not in (1, 3):
        raise RuntimeError(f"spectral_residual: images must have C = 1 or 3 channels, got shape {list(images.shape)}")
    if long_side < 1 or not sigma > 0:
        raise ValueError(f"spectral_residual: long_side must be >= 1 and sigma > 0, got {long_side}, {sigma}")
    F = torch.nn.functional
    B, C, H, W = x.shape

    def channel(c):
        v = x[:, c : c + 1]
        return v.to(torch.float32) / 255.0 if v.dtype == torch.uint8 else v

    grey = channel(0) if C == 1 else _LUMA[0] * channel(0) + _LUMA[1] * channel(1) + _LUMA[2] * channel(2)
    long = max(H, W)
    if long > long_side:
        size = (max(1, (H * long_side + long // 2) // long), max(1, (W * long_side + long // 2) // long))
        grey = F.interpolate(grey, size=size, mode="bilinear", align_corners=False, antialias=True)
    spectrum = torch.fft.fft2(grey)
    amplitude = spectrum.abs().clamp_min(_SR_AMPLITUDE_FLOOR)
    log_amplitude = torch.log(amplitude)
    local_mean = F.avg_pool2d(F.pad(log_amplitude, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    # exp(residual + i * phase) = (spectrum / amplitude) * exp(residual)
    residual_spectrum = spectrum / amplitude * torch.exp(log_amplitude - local_mean)
    sal = torch.fft.ifft2(residual_spectrum).abs().square()
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, device=sal.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    sal = F.pad(sal, (radius, radius, radius, radius), mode="replicate")
    sal = F.conv2d(F.conv2d(sal, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    sal = F.interpolate(sal, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    low, high = torch.aminmax(sal.reshape(B, -1), dim=1)
    low, high = low.view(B, 1, 1), high.view(B, 1, 1)
    return (sal - low) / (high - low).clamp_min(_SR_RANGE_FLOOR)


# ----------------------------------------------------------------------------------------------------
# lmc_loss
# ----------------------------------------------------------------------------------------------------


# Registered as lmcl::lmc_loss (forward: the loss plus the per-row log-sum-exp state backward needs)
# and lmcl::_lmc_loss_backward, which recomputes the similarities tile by tile. Queries are this
# process's crops; keys are all crops (gathered across the group when there is one).


def _lmc_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lmc_check_meta(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile):
    # Mirrors check_lmc_loss_args (csrc/ops/lmc_loss.cpp) except the anchor_idx range (data).
    ok = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    torch._check(z.dim() == 3, lambda: f"lmc_loss: z must have shape [B, N, D], got {tuple(z.shape)}")
    torch._check(z_keys.dim() == 3, lambda: f"lmc_loss: z_keys must have shape [B, N, D], got {tuple(z_keys.shape)}")
    torch._check(
        teacher_keys.dim() == 3, lambda: f"lmc_loss: teacher must have shape [B, N, D], got {tuple(teacher_keys.shape)}"
    )
    torch._check_type(z.dtype in ok, lambda: f"lmc_loss: z must be float32, float16 or bfloat16, got {z.dtype}")
    torch._check_type(
        z_keys.dtype == z.dtype and teacher_keys.dtype == z.dtype,
        lambda: f"lmc_loss: teacher must have the dtype of z ({z.dtype}), got {teacher_keys.dtype}",
    )
    B, N, D = z.shape
    torch._check_value(B >= 2, lambda: f"lmc_loss: z needs B >= 2 images, got B = {B}")
    torch._check_value(N >= 2, lambda: f"lmc_loss: z needs N >= 2 crops per image, got N = {N}")
    torch._check(
        z_keys.shape[0] >= B and z_keys.shape[1] == N and z_keys.shape[2] == D,
        lambda: f"lmc_loss: z_keys must have shape [K >= B, N, D] with z's N and D, got {tuple(z_keys.shape)}",
    )
    torch._check(
        teacher_keys.shape == z_keys.shape,
        lambda: f"lmc_loss: teacher must have the shape of z {tuple(z_keys.shape)}, got {tuple(teacher_keys.shape)}",
    )
    torch._check_type(
        anchor_idx.dtype == torch.int64, lambda: f"lmc_loss: anchor_idx must be int64, got {anchor_idx.dtype}"
    )
    torch._check(
        anchor_idx.dim() == 1 and anchor_idx.shape[0] == B,
        lambda: f"lmc_loss: anchor_idx must have shape [B] = [{B}], got {tuple(anchor_idx.shape)}",
    )
    torch._check_value(
        0 <= key_offset and key_offset + B <= z_keys.shape[0],
        lambda: f"lmc_loss: key_offset must place z's images inside z_keys, got key_offset = {key_offset}",
    )
    torch._check_value(math.isfinite(tau) and tau > 0, lambda: f"lmc_loss: tau must be positive and finite, got {tau}")
    torch._check_value(
        math.isfinite(intra_weight) and intra_weight >= 0,
        lambda: f"lmc_loss: intra_weight must be finite and >= 0, got {intra_weight}",
    )
    torch._check_value(
        math.isfinite(manifold_weight), lambda: f"lmc_loss: manifold_weight must be finite, got {manifold_weight}"
    )
    torch._check_value(key_tile >= 0, lambda: f"lmc_loss: key_tile must be >= 0 (0: automatic), got {key_tile}")


@torch.library.register_fake("lmcl::lmc_loss")
def _lmc_loss_fake(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile=0):
    _lmc_check_meta(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile)
    B, N, _ = z.shape
    acc = _lmc_acc_dtype(z.dtype)
    return (
        z.new_empty((), dtype=acc),
        z.new_empty((B,), dtype=acc),
        z.new_empty((B, N), dtype=acc),
        z.new_empty((B * N,), dtype=acc),
    )


@torch.library.register_fake("lmcl::_lmc_loss_backward")
def _lmc_loss_backward_fake(grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse, cluster_logits, manifold_lse,
                            key_offset, tau, intra_weight, manifold_weight, need_grad_z, need_grad_z_keys,
                            need_grad_teacher_keys, key_tile=0):
    _lmc_check_meta(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile)
    return z.new_empty(z.shape), z_keys.new_empty(z_keys.shape), teacher_keys.new_empty(teacher_keys.shape)


def _lmc_loss_setup_context(ctx, inputs, output):
    z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile = inputs
    _, cluster_lse, cluster_logits, manifold_lse = output
    ctx.mark_non_differentiable(cluster_lse, cluster_logits, manifold_lse)
    # O(B*N*D) inputs and O(B*N) row state: no similarity matrix is kept.
    ctx.save_for_backward(z, anchor_idx, z_keys, teacher_keys, cluster_lse, cluster_logits, manifold_lse)
    ctx.lmc_args = (key_offset, tau, intra_weight, manifold_weight)
    ctx.lmc_key_tile = key_tile


def _lmc_loss_backward(ctx, grad_loss, *_state_grads):
    needs = ctx.needs_input_grad
    grad_z, grad_z_keys, grad_teacher_keys = torch.ops.lmcl._lmc_loss_backward.default(
        grad_loss, *ctx.saved_tensors, *ctx.lmc_args, needs[0], needs[2], needs[3], ctx.lmc_key_tile
    )
    return grad_z, None, grad_z_keys, grad_teacher_keys, None, None, None, None, None


torch.library.register_autograd(
    "lmcl::lmc_loss", _lmc_loss_backward, setup_context=_lmc_loss_setup_context
)


def _lmc_loss_double_backward(ctx, *grads):
    raise RuntimeError("lmc_loss: double backward is not supported (the backward recomputes the similarities "
                       "tile by tile and has no derivative of its own)")


torch.library.register_autograd(
    "lmcl::_lmc_loss_backward", _lmc_loss_double_backward, setup_context=lambda ctx, inputs, output: None
)


def _lmc_gather_keys(x: torch.Tensor, group) -> torch.Tensor:
    # Differentiable all-gather: its backward sums every rank's gradient of the gathered keys and
    # hands each rank the slice of its own rows.
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous(), group=group), dim=0)


def lmc_loss(z, anchor_idx, teacher=None, tau=0.1, intra_weight=0.5, manifold_weight=1.0, group=None):
    """Local manifold contrastive loss (SPEC §1.4): cluster term + manifold_weight * manifold term.

    z: student crop embeddings [B, N, D] (float32/bf16/fp16; float64 computes in float64, for gradcheck);
    anchor_idx: int64 [B]; teacher: [B, N, D] or None (then exactly ``lmc_loss(z, anchor_idx, teacher=z)``,
    gradients flowing through both roles). Returns a float32 scalar (float64 for float64 inputs).
    group: a torch.distributed process group; keys are all-gathered so negatives span the global batch,
    and each rank returns the loss of its own queries (normalised by its own B).
    """
    teacher_in = z if teacher is None else teacher
    args = (float(tau), float(intra_weight), float(manifold_weight))
    if group is None:
        return torch.ops.lmcl.lmc_loss.default(z, anchor_idx, z, teacher_in, 0, *args)[0]
    import torch.distributed as dist

    z_keys = _lmc_gather_keys(z, group)
    teacher_keys = z_keys if teacher is None else _lmc_gather_keys(teacher_in, group)
    key_offset = dist.get_rank(group) * z.shape[0]
    return torch.ops.lmcl.lmc_loss.default(z, anchor_idx, z_keys, teacher_keys, key_offset, *args)[0]


__all__ += ["lmc_loss"]
