"""crop_saliency: the public wrapper, its fake kernels (mirroring csrc/ops/crop_saliency.cpp) and autograd."""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (the schemas must be registered before register_fake below)
from ._boxes import check_boxes_arg_fake, check_boxes_match_fake


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


@torch.library.register_fake("lmcl::crop_saliency")
def _crop_saliency_fake(saliency, boxes):
    op = "crop_saliency"
    torch._check_type(
        saliency.dtype == torch.float32,
        lambda: f"{op}: saliency must be float32 (float64 maps are rejected), got {saliency.dtype}",
    )
    torch._check(saliency.dim() == 3, lambda: f"{op}: saliency must have shape [B, H, W], got {tuple(saliency.shape)}")
    check_boxes_arg_fake(op, boxes)
    check_boxes_match_fake(op, boxes, saliency.shape[0], saliency.device, "saliency")
    return saliency.new_empty((saliency.shape[0], boxes.shape[1]))


@torch.library.register_fake("lmcl::_crop_saliency_backward")
def _crop_saliency_backward_fake(grad, boxes, H, W):
    op = "_crop_saliency_backward"
    torch._check_type(grad.dtype == torch.float32, lambda: f"{op}: grad must be float32, got {grad.dtype}")
    check_boxes_arg_fake(op, boxes)
    torch._check(
        grad.dim() == 2 and grad.shape[0] == boxes.shape[0] and grad.shape[1] == boxes.shape[1],
        lambda: f"{op}: grad must have shape [B, N] = {tuple(boxes.shape[:2])} of boxes, got {tuple(grad.shape)}",
    )
    torch._check(H >= 0 and W >= 0, lambda: f"{op}: H and W must be >= 0, got H = {H}, W = {W}")
    check_boxes_match_fake(op, boxes, grad.shape[0], grad.device, "grad")
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
