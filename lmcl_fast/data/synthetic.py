"""A labelled synthetic IQA dataset made from pristine photos, so everything runs with no download.

Every pristine photo `p` (its id `ref`: the path under `src` without extension, '/' replaced by '_') gives
`1 + T * levels` images: `p` itself and each distortion type `d` of the chosen catalogue (T types) at severity
`level = 1..levels`. Catalogues (data/distortions.py, parameters tabulated in the README):

- `basic` (default, the demo's): jpeg, blur, noise, contrast, saturation.
- `kadid`: the 25 distortion types of KADID-10k (Lin, Hosu and Saupe 2019), 5 levels each.

Score rule (larger is better), the same for both catalogues: `mos = 100 * (1 - w_d * level / (levels + 1))` with
the type's weight w_d, and 100 for the pristine photo. So scores fall strictly with severity within a type, and
types that look worse at equal level fall faster. It is a monotone rule, not a human rating: across types the
ranking follows the weights we chose.
Random draws come from numpy generators seeded with (seed, crc32(ref), type index, level) for `basic` and
(seed, crc32(ref), type index) for `kadid` (every level reuses the same draws, scaled: more noise, more
patches, never different ones): same seed, same files.
"""
from __future__ import annotations

import csv
import os
import zlib

import numpy as np
from PIL import Image, ImageOps

from .distortions import catalogue, distort

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


def make_synthetic(src, out, levels: int = 5, seed: int = 0, max_images=None, size=None,
                   distortions: str = "basic") -> str:
    """Write the synthetic dataset of the pristine photos under `src` (PNG/TIFF/JPEG/BMP, searched recursively,
    sorted by path; the first `max_images` if given) into `out`, and return the path of its labels CSV.

    Layout: `out/images/<ref>.png` (pristine), `out/images/<ref>__<type>_<level>.png` (`.jpg` for the JPEG type:
    the compressed file itself), `out/labels.csv` with columns `name,mos,ref,type,level` (names relative to `out`,
    so `IQADataset(out, csv)` reads it; `type` is empty and `level` 0 for the pristine photo). `size`: resize
    every photo to that short side first (bicubic). `distortions`: the catalogue, "basic" or "kadid".
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
    kinds = catalogue(distortions)
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
        rows.append((name, 100.0, ref, "", 0))
        scale = min(pristine.size) / 256
        for k, kind in enumerate(kinds):
            for level in range(1, levels + 1):
                # basic: own draws per level (its files predate the catalogues); kadid: shared draws, scaled.
                key = [int(seed), zlib.crc32(ref.encode()), k] + ([level] if distortions == "basic" else [])
                t = level / levels
                image = distort(pristine, kind, t, np.random.default_rng(key), scale)
                name = f"images/{ref}__{kind.name}_{level}.{'jpg' if kind.jpeg else 'png'}"
                if kind.jpeg:
                    image.save(os.path.join(out, name), format="JPEG", quality=kind.value(t))
                else:
                    image.save(os.path.join(out, name), compress_level=1)
                rows.append((name, round(synthetic_mos(kind.weight, level, levels), 6), ref, kind.name, level))
    csv_path = os.path.join(out, "labels.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("name", "mos", "ref", "type", "level"))
        writer.writerows(rows)
    return csv_path
