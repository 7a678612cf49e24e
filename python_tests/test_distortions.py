"""The synthetic distortion catalogues: every type degrades a photo more at every level; the kadid set's files."""
import csv
import io
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from lmcl_fast.data import make_synthetic
from lmcl_fast.data.distortions import BASIC, CATALOGUES, KADID, catalogue, catalogue_markdown, distort
from lmcl_fast.data.synthetic import _find_photos, _load


@pytest.fixture(scope="module")
def photo(photos_dir):
    """A 256 x 256 centre crop of the first photo at a 256-pixel short side (scale 1: the tabulated pixels)."""
    im = _load(os.path.join(photos_dir, _find_photos(photos_dir)[0]), 256)
    w, h = im.size
    return im.crop(((w - 256) // 2, (h - 256) // 2, (w - 256) // 2 + 256, (h - 256) // 2 + 256))


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def as_stored(im, kind, t):
    """The image a dataset reads back: JPEG types are stored as the compressed file."""
    if not kind.jpeg:
        return im
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=kind.value(t))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


@pytest.mark.parametrize("kind", KADID + BASIC, ids=lambda d: d.name)
def test_psnr_falls_with_level(photo, kind):
    k = 0 if kind in BASIC else KADID.index(kind)
    values = []
    for level in range(1, 6):
        rng = np.random.default_rng([0, zlib.crc32(b"photo"), k] + ([level] if kind in BASIC else []))
        out = as_stored(distort(photo, kind, level / 5, rng, 1.0), kind, level / 5)
        assert out.size == photo.size and out.mode == "RGB"
        values.append(psnr(out, photo))
    assert values[0] < 60, f"{kind.name}: level 1 leaves the photo almost unchanged (PSNR {values[0]:.1f} dB)"
    assert all(a > b for a, b in zip(values, values[1:])), f"{kind.name}: PSNR by level {values}"


def test_catalogues():
    assert len(KADID) == 25 and len({d.name for d in KADID}) == 25
    assert [d.name for d in BASIC] == ["jpeg", "blur", "noise", "contrast", "saturation"]
    for name, kinds in CATALOGUES.items():
        for d in kinds:
            assert "_" not in d.name  # file names are <ref>__<type>_<level>
            assert len(d.table) == 5 and 0 < d.weight < 1
            assert d.value(1.0) == d.table[-1] and d.value(0.2) == pytest.approx(d.table[0])
    table = catalogue_markdown("kadid")
    assert table.count("\n") == 26 and "`jpeg2000`" in table
    with pytest.raises(ValueError, match="distortions"):
        catalogue("tid2013")


def test_make_synthetic_kadid(photos_dir, tmp_path):
    csv_path = make_synthetic(photos_dir, tmp_path, levels=2, max_images=1, size=48, distortions="kadid")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 + 25 * 2
    assert {r["type"] for r in rows} == {""} | {d.name for d in KADID}
    for r in rows:
        assert (tmp_path / r["name"]).is_file()
        assert (r["type"] == "") == (r["level"] == "0")
