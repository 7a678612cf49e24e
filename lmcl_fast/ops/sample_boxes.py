"""sample_boxes: random multi-scale square boxes for multi_crop (plain torch, SPEC §1.2)."""
from __future__ import annotations

import torch


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
