"""select_anchor: the public wrapper and its fake kernel (mirroring csrc/ops/select_anchor.cpp)."""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (the schemas must be registered before register_fake below)


def select_anchor(scores: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring crop of every image (ties go to the lowest index).

    Args:
        scores: ``[B, N]`` float32/float16/bfloat16 (float64 also accepted), N >= 1, any strides.

    Returns:
        int64 ``[B]``. A NaN anywhere in ``scores`` raises ValueError naming ``scores`` on the CPU; on CUDA
        it is a device-side assert with the same text (no device->host read; see the README).

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
