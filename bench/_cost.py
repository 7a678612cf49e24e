"""Cost models (bytes moved, flops) per op, for achieved GB/s and GFLOP/s in benchmark extra_info."""

# ----------------------------------------------------------------------------------------------------
# multi_crop
# ----------------------------------------------------------------------------------------------------


def multi_crop_bytes(boxes, channels, size, in_itemsize, out_itemsize):
    """Minimal bytes moved by one multi_crop call: every output element written once; per crop, the
    source pixels a bilinear resample without antialiasing touches (at most two source rows/columns per
    output row/column, never more than the box); the boxes themselves.

    boxes: [B, N, 4] tensor or nested list of (top, left, height, width); size: (S_h, S_w).
    """
    s_h, s_w = size
    rows = boxes.tolist() if hasattr(boxes, "tolist") else boxes
    read = sum(min(h, 2 * s_h) * min(w, 2 * s_w) for image in rows for (_, _, h, w) in image)
    crops = sum(len(image) for image in rows)
    return read * channels * in_itemsize + crops * 4 * 8 + crops * channels * s_h * s_w * out_itemsize


# ----------------------------------------------------------------------------------------------------
# crop_saliency
# ----------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------
# lmc_loss
# ----------------------------------------------------------------------------------------------------

