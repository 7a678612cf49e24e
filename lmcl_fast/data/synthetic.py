"""A labelled synthetic IQA dataset made from pristine photos, so everything runs with no download.

Every pristine photo `p` (its id `ref`: the path under `src` without extension, '/' replaced by '_') gives
`1 + 5 * levels` images: `p` itself and each distortion type `d` at severity `level = 1..levels`:

| type | parameter at t = level / levels | weight w_d |
|---|---|---|
| jpeg | JPEG quality round(60 - 55 t) (49, 38, 27, 16, 5 for 5 levels), stored as the .jpg file itself | 0.90 |
| blur | Gaussian blur, sigma = 3.0 t * (short side / 256) pixels | 0.85 |
| noise | additive Gaussian noise, sigma = 25 t (on 0..255), clipped | 0.80 |
| contrast | Pillow ImageEnhance.Contrast factor 1 - 0.8 t | 0.60 |
| saturation | Pillow ImageEnhance.Color factor 1 - t (t = 1: grey) | 0.50 |

Score rule (larger is better): `mos = 100 * (1 - w_d * level / (levels + 1))`, and 100 for the pristine photo.
So scores fall strictly with severity within a type, and types that look worse at equal level fall faster.
The noise is drawn from a generator seeded with (seed, crc32(ref), type, level): same seed, same files.
"""
from __future__ import annotations

import csv
import os
import zlib

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

# (name, weight) in the order of the table above.
DISTORTIONS = (("jpeg", 0.90), ("blur", 0.85), ("noise", 0.80), ("contrast", 0.60), ("saturation", 0.50))
PRISTINE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def synthetic_mos(weight: float, level: int, levels: int) -> float:
    """The score rule: 100 * (1 - weight * level / (levels + 1)) (level 0 is the pristine photo: 100)."""
    return 100.0 * (1.0 - weight * level / (levels + 1))


def _find_photos(src: str) -> list:
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(PRISTINE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(dirpath, f), src))
    return sorted(found)


def _load(path: str, size) -> Image.Image:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    if size is not None:
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return im


def _distort(im: Image.Image, kind: str, t: float, rng: np.random.Generator):
    """Return (image, jpeg_quality or None) for distortion `kind` at severity t in (0, 1]."""
    if kind == "jpeg":
        return im, int(round(60 - 55 * t))
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur(radius=3.0 * t * min(im.size) / 256)), None
    if kind == "noise":
        x = np.asarray(im, dtype=np.float32) + rng.normal(0.0, 25.0 * t, size=(im.size[1], im.size[0], 3))
        return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8)), None
    if kind == "contrast":
        return ImageEnhance.Contrast(im).enhance(1.0 - 0.8 * t), None
    if kind == "saturation":
        return ImageEnhance.Color(im).enhance(1.0 - t), None
    raise AssertionError(kind)


def make_synthetic(src, out, levels: int = 5, seed: int = 0, max_images=None, size=None) -> str:
    """Write the synthetic dataset of the pristine photos under `src` (PNG/TIFF/JPEG/BMP, searched recursively,
    sorted by path; the first `max_images` if given) into `out`, and return the path of its labels CSV.

    Layout: `out/images/<ref>.png` (pristine), `out/images/<ref>__<type>_<level>.png` (`.jpg` for the JPEG type:
    the compressed file itself), `out/labels.csv` with columns `name,mos,ref` (names relative to `out`, so
    `IQADataset(out, csv)` reads it). `size`: resize every photo to that short side first (bicubic).
    Scores follow the rule in the module docstring. Deterministic for a seed; existing files are overwritten.
    """
    src, out = str(src), str(out)
    levels = int(levels)
    if levels < 1:
        raise ValueError(f"make_synthetic: levels must be >= 1, got {levels}")
    if size is not None and int(size) < 8:
        raise ValueError(f"make_synthetic: size must be >= 8 pixels or None, got {size}")
    if max_images is not None and int(max_images) < 1:
        raise ValueError(f"make_synthetic: max_images must be >= 1 or None, got {max_images}")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"make_synthetic: src {src!r} is not a directory")
    photos = _find_photos(src)
    if not photos:
        raise ValueError(f"make_synthetic: src {src!r} holds no {'/'.join(PRISTINE_EXTENSIONS)} photos")
    if max_images is not None:
        photos = photos[: int(max_images)]
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows = []
    for rel in photos:
        ref = os.path.splitext(rel)[0].replace(os.sep, "_").replace("/", "_")
        pristine = _load(os.path.join(src, rel), None if size is None else int(size))
        name = f"images/{ref}.png"
        pristine.save(os.path.join(out, name), compress_level=1)
        rows.append((name, 100.0, ref))
        for k, (kind, weight) in enumerate(DISTORTIONS):
            for level in range(1, levels + 1):
                rng = np.random.default_rng([int(seed), zlib.crc32(ref.encode()), k, level])
                image, quality = _distort(pristine, kind, level / levels, rng)
                name = f"images/{ref}__{kind}_{level}.{'jpg' if quality is not None else 'png'}"
                if quality is not None:
                    image.save(os.path.join(out, name), format="JPEG", quality=quality)
                else:
                    image.save(os.path.join(out, name), compress_level=1)
                rows.append((name, round(synthetic_mos(weight, level, levels), 6), ref))
    csv_path = os.path.join(out, "labels.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("name", "mos", "ref"))
        writer.writerows(rows)
    return csv_path
