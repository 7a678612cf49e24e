"""spectral_residual: the default saliency map (plain torch, torch.fft; not a registered op)."""
from __future__ import annotations

import contextlib
import math

import torch

# ITU-R BT.601 luma weights for the grey image.
_LUMA = (0.299, 0.587, 0.114)
# Floor for the amplitude spectrum before the log: only exact zeros (a flat image) reach it.
_SR_AMPLITUDE_FLOOR = 1e-8
# Floor for the min-max range in the final [0, 1] scaling (a map with no contrast becomes all zeros).
_SR_RANGE_FLOOR = 1e-12
# ... and relative to the map's maximum: float32 rounding of the FFT, blur and resize is ~1e-7 of it.
_SR_FLAT_RELATIVE = 1e-6


def spectral_residual(images: torch.Tensor, long_side: int = 64, sigma: float = 2.5) -> torch.Tensor:
    """Spectral-residual saliency map (Hou and Zhang, CVPR 2007): the default map that needs no weights.

    Steps: grey image (BT.601 luma for C = 3); downscale so the long side is ``long_side`` pixels
    (bilinear with antialiasing; smaller images are used as they are); 2-D FFT; the log-amplitude
    spectrum minus its 3x3 local mean (circular padding, as the spectrum is periodic), with the phase
    kept; inverse FFT; squared magnitude; Gaussian blur with ``sigma`` pixels at the downscaled size
    (kernel radius ceil(3 sigma), replicate padding); bilinear resize back to H x W
    (align_corners=False); scaled to [0, 1] per image (min-max, like ``mat2gray``).
    The defaults (64 px, sigma 2.5) and the scaling follow the widely circulated Matlab code of the
    method, which scales the width rather than the long side and pads the 3x3 mean by replication.

    Args:
        images: uint8 ``[B, H, W, C]`` (channels-last) or float32 ``[B, C, H, W]`` (used as given), C = 1 or 3.
        long_side: length in pixels of the long side of the downscaled grey image.
        sigma: standard deviation, in downscaled pixels, of the Gaussian blur.

    Returns:
        float32 ``[B, H, W]`` on the device of ``images``. Plain torch (torch.fft), traceable by
        ``torch.compile(fullgraph=True)``.

    Example:
        >>> imgs = torch.randint(0, 256, (2, 96, 128, 3), dtype=torch.uint8)
        >>> spectral_residual(imgs).shape
        torch.Size([2, 96, 128])
    """
    if images.dtype == torch.uint8:
        if images.dim() != 4:
            raise RuntimeError(
                f"spectral_residual: uint8 images must have shape [B, H, W, C], got {list(images.shape)}"
            )
        # A channels-last view; channels are converted one at a time below (no full float copy).
        x = images.permute(0, 3, 1, 2)
    elif images.dtype == torch.float32:
        if images.dim() != 4:
            raise RuntimeError(
                f"spectral_residual: float32 images must have shape [B, C, H, W], got {list(images.shape)}"
            )
        x = images
    else:
        raise TypeError(
            f"spectral_residual: images must be uint8 [B, H, W, C] or float32 [B, C, H, W], got {images.dtype}"
        )
    if x.shape[1] not in (1, 3):
        raise RuntimeError(f"spectral_residual: images must have C = 1 or 3 channels, got shape {list(images.shape)}")
    if long_side < 1 or not (0 < sigma < math.inf):  # also NaN; a comparison traces where math.isfinite does not
        raise ValueError(f"spectral_residual: long_side must be >= 1 and sigma > 0 (finite), got {long_side}, "
                         f"{sigma}")
    # float32 math and a float32 map inside autocast too (a caller's bf16 region would otherwise run the blur
    # in bf16 and return bf16, which crop_saliency rejects).
    with torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else contextlib.nullcontext():
        return _spectral_residual_float32(x, long_side, sigma)


def _spectral_residual_float32(x: torch.Tensor, long_side: int, sigma: float) -> torch.Tensor:
    F = torch.nn.functional
    B, C, H, W = x.shape
    if B * H * W == 0:  # nothing to transform (the FFT backends reject empty inputs)
        return torch.zeros((B, H, W), dtype=torch.float32, device=x.device)

    def channel(c):
        v = x[:, c : c + 1]
        return v.to(torch.float32) / 255.0 if v.dtype == torch.uint8 else v

    grey = channel(0) if C == 1 else _LUMA[0] * channel(0) + _LUMA[1] * channel(1) + _LUMA[2] * channel(2)
    long = max(H, W)
    if long > long_side:
        size = (max(1, (H * long_side + long // 2) // long), max(1, (W * long_side + long // 2) // long))
        grey = F.interpolate(grey, size=size, mode="bilinear", align_corners=False, antialias=True)
    spectrum = torch.fft.fft2(grey)
    amplitude = spectrum.abs().clamp_min(_SR_AMPLITUDE_FLOOR)
    log_amplitude = torch.log(amplitude)
    local_mean = F.avg_pool2d(F.pad(log_amplitude, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    # exp(residual + i * phase) = (spectrum / amplitude) * exp(residual)
    residual_spectrum = spectrum / amplitude * torch.exp(log_amplitude - local_mean)
    sal = torch.fft.ifft2(residual_spectrum).abs().square()
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, device=sal.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    sal = F.pad(sal, (radius, radius, radius, radius), mode="replicate")
    sal = F.conv2d(F.conv2d(sal, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    sal = F.interpolate(sal, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    low, high = torch.aminmax(sal.reshape(B, -1), dim=1)
    low, high = low.view(B, 1, 1), high.view(B, 1, 1)
    # A map without contrast beyond float32 rounding (a flat image, a 1-pixel downscale) becomes all zeros instead
    # of its rounding noise stretched to [0, 1]; NaN stays NaN.
    spread = high - low
    flat = spread <= (_SR_FLAT_RELATIVE * high).clamp_min(_SR_RANGE_FLOOR)
    return (sal - low) / torch.where(flat, torch.inf, spread)
