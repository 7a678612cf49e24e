"""spectral_residual (SPEC §1.3): the Hou and Zhang (CVPR 2007) saliency map, plain torch."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lmcl_fast import ops
from lmcl_testing import DEVICES, TOLERANCES

TOL = TOLERANCES[("spectral_residual", torch.float32)]


def reference_spectral_residual(images: torch.Tensor, long_side: int = 64, sigma: float = 2.5) -> torch.Tensor:
    """The documented recipe in float64, written independently: numpy FFTs, the circular 3x3 mean as
    nine rolls, the Gaussian as a direct 2-D convolution over an edge-padded map; resizes through
    F.interpolate (their definition)."""
    if images.dtype == torch.uint8:
        x = images.permute(0, 3, 1, 2).double() / 255.0
    else:
        x = images.double()
    B, C, H, W = x.shape
    grey = x[:, 0:1] if C == 1 else 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    L = max(H, W)
    if L > long_side:
        # Round half up, as documented.
        size = (max(1, math.floor(H * long_side / L + 0.5)), max(1, math.floor(W * long_side / L + 0.5)))
        grey = F.interpolate(grey, size=size, mode="bilinear", align_corners=False, antialias=True)
    r = math.ceil(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k2 = np.outer(k, k) / k.sum() ** 2
    maps = []
    for img in grey[:, 0].cpu().numpy():
        f = np.fft.fft2(img)
        amp = np.maximum(np.abs(f), 1e-8)
        log_amp = np.log(amp)
        local_mean = sum(np.roll(log_amp, (di, dj), (0, 1)) for di in (-1, 0, 1) for dj in (-1, 0, 1)) / 9.0
        s = np.abs(np.fft.ifft2(f / amp * np.exp(log_amp - local_mean))) ** 2
        padded = np.pad(s, r, mode="edge")
        h, w = s.shape
        maps.append(sum(k2[i, j] * padded[i : i + h, j : j + w] for i in range(2 * r + 1) for j in range(2 * r + 1)))
    sal = F.interpolate(torch.from_numpy(np.stack(maps))[:, None], size=(H, W), mode="bilinear", align_corners=False)
    sal = sal[:, 0]
    low, high = sal.amin(dim=(1, 2), keepdim=True), sal.amax(dim=(1, 2), keepdim=True)
    # No contrast beyond float32 rounding (range <= 1e-6 of the maximum): all zeros, as documented.
    flat = (high - low) <= torch.clamp(1e-6 * high, min=1e-12)
    return torch.where(flat, 0.0, (sal - low) / (high - low))


SHAPES = [(2, 96, 128, 3), (1, 40, 30, 1), (1, 7, 200, 3), (3, 64, 64, 3), (1, 131, 67, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device, shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    out = ops.spectral_residual(images)
    assert out.dtype == torch.float32 and out.shape == shape[:3] and out.device == images.device
    torch.testing.assert_close(out.double().cpu(), reference_spectral_residual(images.cpu()), **TOL)


@pytest.mark.parametrize("long_side, sigma", [(32, 1.0), (100, 4.0)])
def test_parameters(long_side, sigma):
    images = torch.rand(2, 3, 150, 90)
    torch.testing.assert_close(
        ops.spectral_residual(images, long_side=long_side, sigma=sigma).double(),
        reference_spectral_residual(images, long_side=long_side, sigma=sigma),
        **TOL,
    )


def test_uint8_and_float_inputs_agree():
    """uint8 [B, H, W, C] and the float32 [B, C, H, W] image it stands for give the same map (bit-equal:
    the float path runs the same arithmetic), for contiguous and channels-last float layouts."""
    images = torch.randint(0, 256, (2, 72, 90, 3), dtype=torch.uint8)
    from_uint8 = ops.spectral_residual(images)
    as_float = images.permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(ops.spectral_residual(as_float), from_uint8)
    assert torch.equal(ops.spectral_residual(as_float.contiguous()), from_uint8)


def test_highlights_a_salient_patch():
    """A bright textured square on a flat background outscores every background box of its size."""
    H, W, S = 128, 160, 32
    images = torch.full((1, 1, H, W), 0.3)
    images[0, 0, 40 : 40 + S, 90 : 90 + S] = 0.7 + 0.3 * torch.rand(S, S)
    sal = ops.spectral_residual(images)
    patch = torch.tensor([[[40, 90, S, S]]])
    background = torch.tensor([[[t, l, S, S] for t in (0, H - S) for l in (0, 40, W - S)]])
    assert ops.crop_saliency(sal, patch).item() > 2 * ops.crop_saliency(sal, background).max().item()


def test_flat_image_gives_finite_map():
    sal = ops.spectral_residual(torch.full((2, 50, 60, 3), 128, dtype=torch.uint8))
    assert torch.isfinite(sal).all() and (sal >= 0).all() and (sal <= 1).all()


def test_real_photo(photos_dir):
    path = os.path.join(photos_dir, "kodak24", "kodim05.png")
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())[None]
    sal = ops.spectral_residual(image)
    assert sal.shape == image.shape[:3] and sal.dtype == torch.float32
    assert torch.isfinite(sal).all() and sal.min() == 0 and sal.max() == 1
    torch.testing.assert_close(sal.double(), reference_spectral_residual(image), **TOL)


def test_torch_compile_fullgraph():
    images = torch.randint(0, 256, (2, 80, 100, 3), dtype=torch.uint8)
    compiled = torch.compile(ops.spectral_residual, fullgraph=True)
    torch.testing.assert_close(compiled(images).double(), reference_spectral_residual(images), **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_keeps_float32_math_and_output(device, dtype):
    """Under autocast (the trainer's bf16 step, or a user's) the map is still float32 math with a float32
    result, which crop_saliency accepts: the same numbers as outside autocast."""
    images = torch.randint(0, 256, (2, 80, 100, 3), dtype=torch.uint8, device=device)
    expected = ops.spectral_residual(images)
    boxes = torch.tensor([[[0, 0, 40, 40], [10, 20, 64, 80]]] * 2, device=device)
    with torch.autocast(device, dtype=dtype):
        sal = ops.spectral_residual(images)
        scores = ops.crop_saliency(sal, boxes)
    assert sal.dtype == torch.float32 and scores.dtype == torch.float32
    torch.testing.assert_close(sal, expected, rtol=0, atol=0)
    torch.testing.assert_close(scores, ops.crop_saliency(expected, boxes), rtol=0, atol=0)


@pytest.mark.parametrize(
    "images, kwargs, exc, match",
    [
        (torch.rand(1, 3, 8, 8, dtype=torch.float64), {}, TypeError, "images must be uint8"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), {}, RuntimeError, r"uint8 images must have shape \[B, H, W, C\]"),
        (torch.rand(3, 8, 8), {}, RuntimeError, r"float32 images must have shape \[B, C, H, W\]"),
        (torch.rand(1, 2, 8, 8), {}, RuntimeError, "images must have C = 1 or 3"),
        (torch.rand(1, 3, 8, 8), {"long_side": 0}, ValueError, "long_side must be >= 1"),
        (torch.rand(1, 3, 8, 8), {"sigma": 0.0}, ValueError, "sigma > 0"),
    ],
)
def test_bad_input(images, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.spectral_residual(images, **kwargs)
