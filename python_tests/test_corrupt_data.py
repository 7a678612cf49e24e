"""Corrupt and unusual files (issue 15): truncated JPEGs, PNGs with a bad CRC, zero-byte files, 1x1 and
20000 x 20000 images (decompression-bomb guard), grey and CMYK JPEGs, 16-bit PNGs. Every decoder path (Pillow
loader, DALI-CPU, `lmcl predict`, a training run) skips or converts them as documented and names each one."""
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lmcl_fast.cli import main
from lmcl_fast.data import IQADataset, ImageTooLarge, dali_available, decode_image, make_loader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> why it is skipped (a word of the reason each decoder path gives)
SKIPPED = {"truncated.jpg": "", "truncated_2.jpg": "", "bad_crc.png": "CRC", "zero_bytes.png": "",
           "huge.png": "decompression-bomb", "huge_2.png": "decompression-bomb"}
CONVERTED = ("one_pixel.png", "grey.jpg", "cmyk.jpg", "grey16.png", "rgb16.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width, height, bit_depth, colour_type, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def zero_png(height: int, width: int, rows_per_block: int = 100) -> bytes:
    """A valid all-black 8-bit grey PNG of any size in milliseconds (390 KB at 20000 x 20000): the deflate
    stream of one block of zero rows, full-flushed, repeats exactly, so it is written once and repeated."""
    c = zlib.compressobj(9)
    block = bytes((width + 1) * rows_per_block)  # filter byte 0 + zero pixels per row
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    repeat = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    n = (width + 1) * height
    adler = (n % 65521) << 16 | 1  # adler32 of n zero bytes
    stream = first + repeat * (height // rows_per_block - 1) + b"\x03\x00" + struct.pack(">I", adler)
    assert height % rows_per_block == 0
    return _png(width, height, 8, 0, stream)


def png16(array: np.ndarray) -> bytes:
    """16-bit PNG (grey [H, W] or RGB [H, W, 3]) written by hand: Pillow cannot write 16-bit RGB."""
    colour = 0 if array.ndim == 2 else 2
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    return _png(array.shape[1], array.shape[0], 16, colour, zlib.compress(rows))


@pytest.fixture(scope="module")
def corrupt_set(synthetic, tmp_path_factory):
    """The synthetic set (44 good PNG/JPEG images) plus 11 hostile files, as (root, csv path)."""
    src_root, src_csv = synthetic
    root = str(tmp_path_factory.mktemp("corrupt"))
    shutil.copytree(os.path.join(src_root, "images"), os.path.join(root, "images"))
    rng = np.random.default_rng(0)
    images = os.path.join(root, "images")
    photo = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(os.path.join(images, "ok.jpg"), quality=90)
    jpeg = open(os.path.join(images, "ok.jpg"), "rb").read()
    for name, cut in (("truncated.jpg", len(jpeg) // 2), ("truncated_2.jpg", 200)):
        open(os.path.join(images, name), "wb").write(jpeg[:cut])
    Image.fromarray(photo).save(os.path.join(images, "ok.png"))
    png = bytearray(open(os.path.join(images, "ok.png"), "rb").read())
    idat = png.find(b"IDAT")
    png[idat + 4 + struct.unpack(">I", png[idat - 4:idat])[0]] ^= 0xFF  # the IDAT CRC; the pixel data is intact
    open(os.path.join(images, "bad_crc.png"), "wb").write(png)
    open(os.path.join(images, "zero_bytes.png"), "wb").close()
    Image.fromarray(photo[:1, :1]).save(os.path.join(images, "one_pixel.png"))
    open(os.path.join(images, "huge.png"), "wb").write(zero_png(20000, 20000))
    open(os.path.join(images, "huge_2.png"), "wb").write(zero_png(12000, 9000))  # over 1x, under 2x the limit
    Image.fromarray(photo[..., 0]).save(os.path.join(images, "grey.jpg"), quality=90)
    Image.fromarray(photo).convert("CMYK").save(os.path.join(images, "cmyk.jpg"), quality=90)
    open(os.path.join(images, "grey16.png"), "wb").write(png16(rng.integers(0, 65536, (30, 40), dtype=np.uint16)))
    open(os.path.join(images, "rgb16.png"), "wb").write(png16(rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)))
    csv_path = os.path.join(root, "labels.csv")
    lines = open(src_csv).read().splitlines()
    refs = sorted({line.split(",")[2] for line in lines[1:]})  # the hostile files join the 4 contents' groups
    extra = [f"images/{n},{50 + i},{refs[i % len(refs)]}" for i, n in enumerate(sorted(SKIPPED) + list(CONVERTED))]
    open(csv_path, "w").write("\n".join(lines + extra) + "\n")
    return root, csv_path


def expected_pixels(path: str) -> np.ndarray:
    """What each converted file must decode to (uint8 RGB), written independently of decode_image."""
    im = Image.open(path)
    if im.mode.startswith("I"):  # 16-bit grey: round(v * 255 / 65535), DALI's rule
        grey = np.round(np.asarray(im).astype(np.float64) * 255 / 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


DECODERS = ["pillow"] + (["dali"] if dali_available() else [])


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_skips_and_converts_by_name(corrupt_set, decoder, caplog):
    root, csv_path = corrupt_set
    ds = IQADataset(root, csv_path)
    loader = make_loader(ds, 8, shuffle=False, seed=0, num_workers=0, decoder=decoder)
    loader.set_epoch(0)
    skipped, decoded = [], {}
    with caplog.at_level("WARNING", logger="lmcl_fast.data"):
        for batch in loader:
            skipped += batch["skipped"]
            for k, name in enumerate(batch["names"]):
                h, w = int(batch["heights"][k]), int(batch["widths"][k])
                decoded[name] = batch["images"][k, :h, :w].numpy()
    assert sorted(skipped) == sorted(f"images/{n}" for n in SKIPPED)
    assert len(decoded) == len(ds) - len(SKIPPED)
    for name, word in SKIPPED.items():
        reasons = [r.getMessage() for r in caplog.records if f"images/{name}" in r.getMessage()]
        assert reasons and word in reasons[0], reasons
    for name in CONVERTED:
        got, want = decoded[f"images/{name}"], expected_pixels(os.path.join(root, "images", name))
        # 16-bit RGB: Pillow keeps the high byte, DALI rounds (README): they may differ by one.
        assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= (name == "rgb16.png")


def test_decode_image_guard_raises_image_too_large(corrupt_set, tmp_path, monkeypatch):
    root, _ = corrupt_set
    with pytest.raises(ImageTooLarge, match="decompression-bomb guard"):
        decode_image(os.path.join(root, "images", "huge.png"))
    small = tmp_path / "zeros.png"
    small.write_bytes(zero_png(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 - 1)  # the user's Pillow limit is the limit
    with pytest.raises(ImageTooLarge, match="100 x 100 = 10000 pixels > PIL.Image.MAX_IMAGE_PIXELS = 9999"):
        decode_image(str(small))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit
    assert decode_image(str(small)).shape == (100, 100, 3)


def test_training_and_predict_finish_and_name_every_bad_file(corrupt_set, tmp_path, capsys):
    """A training run over the corrupt set finishes; `lmcl predict` scores every good file and names each bad one
    (it used to stop at the 20000 x 20000 PNG with a DecompressionBombError traceback and score none)."""
    root, csv_path = corrupt_set
    out = str(tmp_path / "run")
    flags = ["--arch", "tiny", "--crop-size", "32", "--n-crops", "3", "--min-crop", "16", "--batch-size", "8",
             "--epochs", "1", "--num-workers", "0", "--eval-grid", "2", "--device", "cpu", "--no-progress"]
    assert main(["train", "--root", root, "--csv", csv_path, "--out-dir", out] + flags) == 0
    capsys.readouterr()
    names = sorted(SKIPPED) + list(CONVERTED) + ["ok.jpg", "ok.png"]
    paths = [os.path.join(root, "images", n) for n in names]
    assert main(["predict", *paths, "--checkpoint", os.path.join(out, "split_00", "last.pt"), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    scored = [line.split("\t")[1] for line in captured.out.strip().splitlines()]
    assert scored == paths[len(SKIPPED):]
    for name in SKIPPED:
        assert f"cannot read {os.path.join(root, 'images', name)}" in captured.err
    assert "ImageTooLarge" in captured.err and "Traceback" not in captured.err
