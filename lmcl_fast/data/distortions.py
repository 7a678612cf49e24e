"""Distortion catalogues of the synthetic dataset: `basic` (5 types, the demo's) and `kadid` (the 25 types of
KADID-10k, Lin, Hosu and Saupe, QoMEX 2019), each type with its parameter at every level and its score weight.

A type's severity parameter comes from a 5-entry table (levels 1..5) by linear interpolation in t = level / levels
from the identity value at t = 0, so `levels = 5` gives exactly the table (see `Distortion.value`). Spatial
parameters (pixels) are for a 256-pixel short side and scale with the image's short side (`s = min(H, W) / 256`).
The parameters follow the kinds of KADID-10k's distortions, not its MATLAB code: the levels here were chosen so
that every type changes the image visibly at level 1 and the PSNR against the pristine photo falls strictly with
the level (tested). Colour work uses full-range BT.601 YCbCr (KADID uses CIELAB for some types).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage, signal

# Full-range BT.601 (JPEG's YCbCr), on the 0..1 scale with chroma centred at 0.
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                       dtype=np.float64)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)


@dataclass(frozen=True)
class Distortion:
    """One distortion type: `apply(image, value, s, rng)` maps a Pillow RGB image to the distorted one at
    parameter `value` and scale `s`; `table` holds the parameter at levels 1..5, `identity` the value
    that leaves the image unchanged; `weight` enters the score rule of synthetic.py. `jpeg` types are stored
    as the compressed file itself (the value is the JPEG quality)."""
    name: str
    weight: float
    parameter: str
    identity: float
    table: tuple
    apply: Callable | None
    integer: bool = False
    jpeg: bool = False

    def value(self, t: float):
        """The parameter at severity t in (0, 1]: piecewise linear through (0, identity) and (k / 5, table[k-1])."""
        v = float(np.interp(t, np.linspace(0.0, 1.0, len(self.table) + 1), (self.identity,) + tuple(self.table)))
        return int(round(v)) if self.integer else v


def _luma(x):
    return x @ _RGB_TO_YCC[0]


def _ycc(x):
    return x @ _RGB_TO_YCC.T


def _rgb(y):
    return y @ _YCC_TO_RGB.T


def _pil(x) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


def _arr(im: Image.Image):
    return np.asarray(im, dtype=np.float64) / 255.0


def _px(v: float, s: float, low: float = 1.0) -> float:
    """A spatial parameter at this image's scale (never below `low`)."""
    return max(low, v * s)


def _on_array(fn):
    """A Pillow-image distortion from one on float64 RGB arrays in [0, 1] (its result is clipped and rounded)."""
    def apply(im, value, s, rng):
        return _pil(np.clip(fn(_arr(im), value, s, rng), 0.0, 1.0))
    apply.__name__ = fn.__name__
    return apply


# ------------------------------------------------------------------------------------------- the types
def _gaussian_blur(x, sigma, s, rng):
    return ndimage.gaussian_filter(x, sigma=(sigma * s, sigma * s, 0), mode="reflect")


def _disc_kernel(radius: float):
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    # Area of each pixel inside the disc, approximated on a 4x4 sub-grid: a smooth kernel for fractional radii.
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    inside = ((yy[..., None, None] + sub[:, None]) ** 2 + (xx[..., None, None] + sub[None, :]) ** 2) <= radius ** 2
    k = inside.mean(axis=(2, 3))
    return k / k.sum()


def _convolve_rgb(x, kernel):
    return np.stack([ndimage.convolve(x[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)


def _lens_blur(x, radius, s, rng):
    return _convolve_rgb(x, _disc_kernel(_px(radius, s, 0.5)))


def _motion_blur(x, length, s, rng):
    length = _px(length, s, 1.0)
    angle = rng.uniform(0.0, np.pi)
    r = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * r + 1, 2 * r + 1))
    for d in np.linspace(-length / 2, length / 2, 8 * int(np.ceil(length)) + 1):  # splat points along the line
        py, px = r + d * np.sin(angle), r + d * np.cos(angle)
        y0, x0 = int(np.floor(py)), int(np.floor(px))
        fy, fx = py - y0, px - x0
        k[y0, x0] += (1 - fy) * (1 - fx)
        k[y0, x0 + 1] += (1 - fy) * fx
        k[y0 + 1, x0] += fy * (1 - fx)
        k[y0 + 1, x0 + 1] += fy * fx
    return _convolve_rgb(x, k / k.sum())


def _colour_diffusion(x, sigma, s, rng):
    y = _ycc(x)
    y[..., 1:] = ndimage.gaussian_filter(y[..., 1:], sigma=(sigma * s, sigma * s, 0), mode="reflect")
    return _rgb(y)


def _colour_shift(x, shift, s, rng):
    d = int(round(_px(shift, s)))
    out = x.copy()
    out[:, d:, 1] = x[:, :-d, 1]  # green moved right by d pixels; the first columns repeat the edge
    out[:, :d, 1] = x[:, :1, 1]
    return out


def _colour_quantisation(x, colours, s, rng):
    im = _pil(x).quantize(colors=int(colours), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return _arr(im.convert("RGB"))


def _desaturate_hsv(x, factor, s, rng):
    v = x.max(axis=-1, keepdims=True)  # HSV saturation scaled by `factor` at fixed hue and value
    return v - factor * (v - x)


def _saturate_ycc(x, factor, s, rng):
    y = _ycc(x)
    y[..., 1:] *= factor
    return _rgb(y)


def _jpeg2000(x, ratio, s, rng):
    buf = io.BytesIO()
    _pil(x).save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)])
    buf.seek(0)
    with Image.open(buf) as im:
        return _arr(im.convert("RGB"))


def _white_noise(x, var, s, rng):
    return x + np.sqrt(var) * rng.standard_normal(x.shape)


def _chroma_noise(x, var, s, rng):
    y = _ycc(x)
    y[..., 1:] += np.sqrt(var) * rng.standard_normal(y[..., 1:].shape)
    return _rgb(y)


def _impulse_noise(x, density, s, rng):
    u = rng.random(x.shape[:2])  # one draw per pixel: a pixel hit at one level stays hit at the next
    salt = rng.random(x.shape[:2]) < 0.5
    out = x.copy()
    hit = u < density
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


def _multiplicative_noise(x, var, s, rng):
    return x * (1.0 + np.sqrt(var) * rng.standard_normal(x.shape))


def _denoise(x, var, s, rng):
    noisy = np.clip(x + np.sqrt(var) * rng.standard_normal(x.shape), 0.0, 1.0)
    # Adaptive Wiener filter (5 x 5) told the true noise variance: smooths, leaves some noise.
    return np.stack([signal.wiener(noisy[..., c], mysize=5, noise=var) for c in range(3)], axis=-1)


def _brighten(x, amount, s, rng):
    return np.clip(x, 0.0, 1.0) ** (1.0 / (1.0 + amount))


def _darken(x, amount, s, rng):
    return np.clip(x, 0.0, 1.0) ** (1.0 + amount)


def _mean_shift(x, shift, s, rng):
    return x + shift


def _jitter(x, amount, s, rng):
    h, w = x.shape[:2]
    d = _px(amount, s, 0.0) * rng.uniform(-1.0, 1.0, size=(2, h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [yy + d[0], xx + d[1]]
    return np.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect") for c in range(3)], axis=-1)


def _placements(rng, h, w, size, count):
    """`count` (top, left) positions of size x size squares inside the image (the first k are the same for
    every count: higher levels add squares)."""
    tops = rng.integers(0, max(1, h - size + 1), size=count)
    lefts = rng.integers(0, max(1, w - size + 1), size=count)
    return list(zip(tops.tolist(), lefts.tolist()))


def _area_count(count, x):
    return max(1, int(round(count * x.shape[0] * x.shape[1] / (256 * 384))))


def _patches(x, count, s, rng):
    h, w = x.shape[:2]
    size = int(round(_px(16, s, 4)))
    n = _area_count(count, x)
    targets = _placements(rng, h, w, size, 400)  # fixed draws, so higher levels add patches
    offsets = rng.integers(-size, size + 1, size=(400, 2))
    out = x.copy()
    for (t, l), (dy, dx) in list(zip(targets, offsets.tolist()))[:n]:
        st = min(max(t + dy, 0), h - size)
        sl = min(max(l + dx, 0), w - size)
        if (st, sl) == (t, l):
            st = t + size if t + 2 * size <= h else t - size  # never copy a patch onto itself
        out[t:t + size, l:l + size] = x[st:st + size, sl:sl + size]
    return out


def _pixelate(x, block, s, rng):
    b = int(round(_px(block, s, 2)))
    im = _pil(x)
    w, h = im.size
    small = im.resize((max(1, round(w / b)), max(1, round(h / b))), Image.Resampling.BOX)
    return _arr(small.resize((w, h), Image.Resampling.NEAREST))


def _quantise(x, steps, s, rng):
    n = int(steps)
    return np.round(np.clip(x, 0.0, 1.0) * (n - 1)) / (n - 1)


def _colour_blocks(x, count, s, rng):
    h, w = x.shape[:2]
    size = int(round(_px(24, s, 2)))
    places = _placements(rng, h, w, size, 40)
    colours = rng.random((40, 3))
    out = x.copy()
    for (t, l), c in list(zip(places, colours))[: _area_count(count, x)]:
        out[t:t + size, l:l + size] = c
    return out


def _sharpen(x, percent, s, rng):
    return _arr(_pil(x).filter(ImageFilter.UnsharpMask(radius=_px(2.0, s, 0.5), percent=int(percent), threshold=0)))


def _contrast(x, factor, s, rng):
    return _arr(ImageEnhance.Contrast(_pil(x)).enhance(factor))


def _gaussian_blur_basic(im, sigma, s, rng):
    return im.filter(ImageFilter.GaussianBlur(radius=sigma * s))


def _noise_basic(im, sigma, s, rng):
    x = np.asarray(im, dtype=np.float32) + rng.normal(0.0, sigma, size=(im.size[1], im.size[0], 3))
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _contrast_basic(im, factor, s, rng):
    return ImageEnhance.Contrast(im).enhance(factor)


def _colour_basic(im, factor, s, rng):
    return ImageEnhance.Color(im).enhance(factor)


# The demo's set; these functions take and return Pillow images (the files are those the set always wrote).
BASIC = (
    Distortion("jpeg", 0.90, "JPEG quality", 60, (49, 38, 27, 16, 5), None, integer=True, jpeg=True),
    Distortion("blur", 0.85, "Gaussian blur sigma (px)", 0.0, (0.6, 1.2, 1.8, 2.4, 3.0), _gaussian_blur_basic),
    Distortion("noise", 0.80, "Gaussian noise sigma (0..255)", 0.0, (5, 10, 15, 20, 25), _noise_basic),
    Distortion("contrast", 0.60, "Pillow contrast factor", 1.0, (0.84, 0.68, 0.52, 0.36, 0.2), _contrast_basic),
    Distortion("saturation", 0.50, "Pillow colour factor", 1.0, (0.8, 0.6, 0.4, 0.2, 0.0), _colour_basic),
)

# KADID-10k's 25 types in the paper's order (its numbering in the comments).
KADID = (
    Distortion("gblur", 0.85, "Gaussian blur sigma (px)", 0.0, (0.5, 1.0, 1.5, 2.5, 4.0),
               _on_array(_gaussian_blur)),  # 1
    Distortion("lensblur", 0.85, "disc (defocus) kernel radius (px)", 0.0, (1, 2, 3, 4, 6), _on_array(_lens_blur)),  # 2
    Distortion("motionblur", 0.80, "line kernel length (px), random angle", 0.0, (2, 4, 6, 9, 13),
               _on_array(_motion_blur)),  # 3
    Distortion("colordiffuse", 0.55, "Gaussian blur sigma of the chroma (Cb, Cr) planes (px)", 0.0,
               (1, 2, 4, 6, 10), _on_array(_colour_diffusion)),  # 4
    Distortion("colorshift", 0.60, "green plane moved right (px)", 0.0, (1, 2, 4, 6, 9), _on_array(_colour_shift),
               integer=True),  # 5
    Distortion("colorquant", 0.70, "palette colours (median cut, no dither)", 256, (64, 32, 16, 10, 6),
               _on_array(_colour_quantisation), integer=True),  # 6
    Distortion("desaturate", 0.45, "HSV saturation factor", 1.0, (0.8, 0.6, 0.4, 0.2, 0.0),
               _on_array(_desaturate_hsv)),  # 7
    Distortion("oversaturate", 0.50, "chroma (Cb, Cr) gain", 1.0, (1.4, 1.8, 2.3, 3.0, 4.0),
               _on_array(_saturate_ycc)),  # 8
    Distortion("jpeg2000", 0.85, "JPEG 2000 compression ratio", 1.0, (20, 40, 80, 140, 220), _on_array(_jpeg2000)),  # 9
    Distortion("jpeg", 0.90, "JPEG quality", 100, (45, 30, 18, 9, 4), None, integer=True, jpeg=True),  # 10
    Distortion("whitenoise", 0.80, "Gaussian noise variance (0..1 scale)", 0.0,
               (0.0005, 0.0015, 0.003, 0.006, 0.012), _on_array(_white_noise)),  # 11
    Distortion("colornoise", 0.65, "Gaussian noise variance of Cb, Cr (0..1 scale)", 0.0,
               (0.0005, 0.0015, 0.003, 0.006, 0.012), _on_array(_chroma_noise)),  # 12
    Distortion("impulse", 0.85, "salt-and-pepper density (fraction of pixels)", 0.0,
               (0.005, 0.01, 0.02, 0.04, 0.08), _on_array(_impulse_noise)),  # 13
    Distortion("multnoise", 0.70, "multiplicative (speckle) noise variance", 0.0, (0.002, 0.006, 0.012, 0.025, 0.05),
               _on_array(_multiplicative_noise)),  # 14
    Distortion("denoise", 0.70, "noise variance before a 5 x 5 Wiener filter", 0.0,
               (0.001, 0.003, 0.006, 0.012, 0.025), _on_array(_denoise)),  # 15
    Distortion("brighten", 0.50, "a of the curve x^(1 / (1 + a))", 0.0, (0.15, 0.3, 0.5, 0.8, 1.2),
               _on_array(_brighten)),  # 16
    Distortion("darken", 0.55, "a of the curve x^(1 + a)", 0.0, (0.15, 0.3, 0.5, 0.8, 1.2), _on_array(_darken)),  # 17
    Distortion("meanshift", 0.50, "value added to every channel (0..1 scale)", 0.0, (0.04, 0.08, 0.12, 0.17, 0.23),
               _on_array(_mean_shift)),  # 18
    Distortion("jitter", 0.75, "largest random pixel displacement (px)", 0.0, (0.5, 1.0, 1.5, 2.5, 4.0),
               _on_array(_jitter)),  # 19
    Distortion("patches", 0.65, "16 px patches displaced (per 256 x 384 pixels)", 0, (5, 10, 20, 35, 60),
               _on_array(_patches), integer=True),  # 20 (non-eccentricity patch)
    Distortion("pixelate", 0.80, "block side (px)", 1, (2, 3, 4, 6, 8), _on_array(_pixelate), integer=True),  # 21
    Distortion("quantize", 0.70, "grey levels per channel (uniform)", 256, (24, 16, 11, 8, 5), _on_array(_quantise),
               integer=True),  # 22
    Distortion("colorblock", 0.65, "24 px random-colour blocks (per 256 x 384 pixels)", 0, (2, 4, 7, 11, 16),
               _on_array(_colour_blocks), integer=True),  # 23
    Distortion("sharpen", 0.55, "unsharp mask percent (radius 2 px)", 0, (60, 120, 200, 320, 500), _on_array(_sharpen),
               integer=True),  # 24
    Distortion("contrast", 0.60, "Pillow contrast factor", 1.0, (0.8, 0.65, 0.5, 0.35, 0.2),
               _on_array(_contrast)),  # 25
)

CATALOGUES = {"basic": BASIC, "kadid": KADID}


def catalogue(name: str) -> tuple:
    if name not in CATALOGUES:
        raise ValueError(f"distortions must be one of {sorted(CATALOGUES)}, got {name!r}")
    return CATALOGUES[name]


def distort(im: Image.Image, d: Distortion, t: float, rng: np.random.Generator, scale: float) -> Image.Image:
    """`im` (RGB) distorted by type `d` at severity t in (0, 1]; `scale` = short side / 256. JPEG types are
    returned unchanged (the caller writes them with quality `d.value(t)`)."""
    if d.jpeg:
        return im
    return d.apply(im, d.value(t), scale, rng)


def catalogue_markdown(name: str, levels: int = 5) -> str:
    """The catalogue as a Markdown table: type, parameter, its value at each level, weight."""
    ds = catalogue(name)
    head = "| type | parameter | " + " | ".join(f"level {k}" for k in range(1, levels + 1)) + " | weight |"
    lines = [head, "|" + "---|" * (levels + 3)]
    for d in ds:
        vals = " | ".join(f"{d.value(k / levels):g}" for k in range(1, levels + 1))
        lines.append(f"| `{d.name}` | {d.parameter} | {vals} | {d.weight:.2f} |")
    return "\n".join(lines)
