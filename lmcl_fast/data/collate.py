"""Batching of variable-size images: zero padding to the largest image of the batch."""
from __future__ import annotations

import torch

from .dataset import SkippedItem


def pad_images(images: list) -> tuple:
    """Stack uint8 [H_i, W_i, 3] tensors into [B, Hmax, Wmax, 3], zero-padded at the bottom and the right.

    Returns (images, heights int64 [B], widths int64 [B]) with images on the first image's device (CPU for an
    empty list, which gives a [0, 0, 0, 3] batch).
    """
    heights = torch.tensor([im.shape[0] for im in images], dtype=torch.int64)
    widths = torch.tensor([im.shape[1] for im in images], dtype=torch.int64)
    h = int(heights.max()) if images else 0
    w = int(widths.max()) if images else 0
    device = images[0].device if images else torch.device("cpu")
    out = torch.zeros((len(images), h, w, 3), dtype=torch.uint8, device=device)
    for b, im in enumerate(images):
        out[b, : im.shape[0], : im.shape[1]] = im
    return out, heights, widths


def collate_padded(items: list) -> dict:
    """Collate `IQADataset` items into one padded batch.

    Returns dict(images uint8 [B, Hmax, Wmax, 3] (zero-padded bottom/right), heights int64 [B], widths int64
    [B], mos float32 [B], index int64 [B], names list[str], skipped list[str], skip_reasons list[str]).
    `SkippedItem`s (unreadable files) are left out of the tensors and listed by name in `skipped` (with the
    reason at the same position of `skip_reasons`); when every item was skipped B = 0.
    """
    kept = [it for it in items if not isinstance(it, SkippedItem)]
    images, heights, widths = pad_images([it["image"] for it in kept])
    return dict(
        images=images,
        heights=heights,
        widths=widths,
        mos=torch.tensor([it["mos"] for it in kept], dtype=torch.float32),
        index=torch.tensor([it["index"] for it in kept], dtype=torch.int64),
        names=[it["name"] for it in kept],
        skipped=[it.name for it in items if isinstance(it, SkippedItem)],
        skip_reasons=[it.reason for it in items if isinstance(it, SkippedItem)],
    )
