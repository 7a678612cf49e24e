"""Cost models (bytes moved, flops) per op, for achieved GB/s and GFLOP/s in benchmark extra_info."""

# ----------------------------------------------------------------------------------------------------
# multi_crop
# ----------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------
# crop_saliency
# ----------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------
# lmc_loss
# ----------------------------------------------------------------------------------------------------


def lmc_loss_flops(B: int, N: int, D: int, world: int = 1) -> dict:
    """Similarity-matmul flops of lmc_loss (2 per multiply-add), forward and backward separately.

    Queries: the B*N manifold rows and the B anchor rows; keys: the world*B*N gathered crops.
    Forward: S = Q K^T once. Backward: S again, then dQ = G K and dK = G^T Q, i.e. 3x the forward.
    Element-wise work (exp, masks) and the O(M*D) normalisation are not counted.
    """
    rows = B * N + B
    keys = world * B * N
    fwd = 2 * rows * keys * D
    return {"flops_fwd": fwd, "flops_bwd": 3 * fwd}
