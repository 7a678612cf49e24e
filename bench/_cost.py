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


def crop_saliency_bytes(B: int, H: int, W: int, N: int, box_itemsize: int = 8) -> int:
    """The traffic a crop_saliency call cannot avoid: read the float32 map once, read the boxes, write
    the float32 means. The float64 table is the implementation's own traffic and is not counted, so
    GB/s from this is "useful bytes per second"."""
    return B * H * W * 4 + B * N * 4 * box_itemsize + B * N * 4


def spectral_residual_bytes(B: int, H: int, W: int, C: int = 3) -> int:
    """uint8 images read once, float32 map written once."""
    return B * H * W * C + B * H * W * 4


# ----------------------------------------------------------------------------------------------------
# lmc_loss
# ----------------------------------------------------------------------------------------------------


def lmc_loss_flops(B: int, N: int, D: int, world: int = 1) -> dict:
    """The similarity matmuls' flops that a training step needs (2 per multiply-add), forward and backward.

    Queries: the B*N manifold rows and the B anchor rows; keys: the world*B*N gathered crops.
    Forward: S = Q K^T. Backward: dQ = G K and dK = G^T Q, i.e. 2x the forward: the three GEMMs of eager
    autograd. A backward that recomputes S tile by tile does one forward more, which is not counted (the
    CPU op does not need it, bench/RESULTS.md). Element-wise work (exp, masks) and the O(M*D) normalisation
    are not counted either.
    """
    rows = B * N + B
    keys = world * B * N
    fwd = 2 * rows * keys * D
    return {"flops_fwd": fwd, "flops_bwd": 2 * fwd}
