"""Metadata checks of a ``boxes`` argument for the fake kernels, the mirror of csrc/ops/boxes.cpp."""
from __future__ import annotations

import torch


def check_boxes_arg_fake(op: str, boxes: torch.Tensor) -> None:
    """boxes: int32/int64 ``[B, N, 4]``, rows (top, left, height, width)."""
    torch._check_type(
        boxes.dtype in (torch.int32, torch.int64), lambda: f"{op}: boxes must be int32 or int64, got {boxes.dtype}"
    )
    torch._check(
        boxes.dim() == 3 and boxes.shape[2] == 4,
        lambda: f"{op}: boxes must have shape [B, N, 4] (top, left, height, width), got {list(boxes.shape)}",
    )


def check_boxes_match_fake(op: str, boxes: torch.Tensor, batch, device, source: str) -> None:
    """boxes: one row of boxes per image of ``source`` (batch size ``batch``), on source's device."""
    torch._check(
        boxes.shape[0] == batch,
        lambda: f"{op}: boxes must have the batch size B = {batch} of {source}, got boxes of shape "
        f"{list(boxes.shape)}",
    )
    torch._check(
        boxes.device == device, lambda: f"{op}: boxes must be on the device of {source} ({device}), got {boxes.device}"
    )
