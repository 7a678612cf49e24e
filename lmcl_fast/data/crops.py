"""The handoff from a decoded batch (Pillow or DALI, on any device) to the `multi_crop` op."""
from __future__ import annotations

import torch


def random_crops(batch: dict, n: int, size, *, scales=(0.25, 1.0), min_size: int = 32, mean=None, std=None,
                 flip=None, out_dtype=torch.float32, generator=None):
    """`n` multi-scale crops per image of a `make_loader` batch, resampled to `size`.

    The batch's uint8 [B, Hmax, Wmax, 3] images go to `lmcl_fast.ops.multi_crop` as they are (channels-last,
    on the loader's device: no copy); boxes come from `sample_boxes` over each image's valid (unpadded)
    `heights` x `widths`, so no crop touches the padding. Returns (crops [B, n, 3, S_h, S_w], boxes [B, n, 4]).
    """
    from .. import ops
    from .loader import to_device

    boxes = ops.sample_boxes(batch["heights"], batch["widths"], n, scales=scales, min_size=min_size,
                             generator=generator)
    crops = ops.multi_crop(batch["images"], to_device(boxes, batch["images"].device), size, mean=mean, std=std, flip=flip,
                           out_dtype=out_dtype)
    return crops, boxes
