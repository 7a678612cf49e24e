"""Cost models (bytes moved, flops) per op, for achieved GB/s and GFLOP/s in benchmark extra_info."""

# ----------------------------------------------------------------------------------------------------
# multi_crop
# ----------------------------------------------------------------------------------------------------



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

