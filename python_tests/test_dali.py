"""The DALI decoder path: same order and the same tensors as the Pillow path, corrupt files skipped by name.

Runs DALI's CPU decoder (this machine and CI have no GPU); skipped when NVIDIA DALI (the `dali` extra,
nvidia-dali-cuda130) is not installed.
"""
import io
import os

import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (pip install 'lmcl_fast[dali]') is not installed")

import lmcl_fast  # noqa: E402
from lmcl_fast.data import IQADataset, make_loader  # noqa: E402

PHOTO_NAMES = ["kodak24/kodim01.png", "kodak24/kodim07.png", "kodak24/kodim19.png", "mcmaster/3.tif",
               "mcmaster/12.tif"]


def write_csv(path, names):
    with open(path, "w") as f:
        f.write("name,mos\n" + "".join(f"{n},{k}\n" for k, n in enumerate(names)))
    return str(path)


def batches(ds, decoder, **kw):
    args = dict(shuffle=True, seed=11, num_workers=2 if decoder == "dali" else 0, rank=0, world_size=1)
    args.update(kw)
    loader = make_loader(ds, 2, decoder=decoder, **args)
    loader.set_epoch(3)
    return len(loader), list(loader)


def assert_same_batches(ds, **kw):
    n_dali, dali = batches(ds, "dali", **kw)
    n_pil, pil = batches(ds, "pillow", **kw)
    assert n_dali == n_pil == len(dali) == len(pil)
    for a, b in zip(dali, pil):
        assert a["names"] == b["names"] and a["skipped"] == b["skipped"]
        for key in ("images", "heights", "widths", "mos", "index"):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    return dali


def test_png_and_tiff_equal_pillow_pixel_for_pixel(photos_dir, tmp_path):
    ds = IQADataset(photos_dir, write_csv(tmp_path / "l.csv", PHOTO_NAMES))
    dali = assert_same_batches(ds, world_size=2, rank=1)
    assert sum(b["images"].shape[0] for b in dali) == 3


def test_mixed_sizes_padding_and_modes(photos_dir, tmp_path):
    src = Image.open(os.path.join(photos_dir, PHOTO_NAMES[0]))
    variants = {"rgb.png": src.crop((0, 0, 61, 37)), "grey.png": src.convert("L").crop((5, 5, 40, 90)),
                "pal.png": src.convert("P").crop((0, 0, 33, 20)), "rgba.png": src.convert("RGBA").crop((9, 9, 50, 52))}
    for name, im in variants.items():
        im.save(tmp_path / name)
    assert_same_batches(IQADataset(tmp_path, write_csv(tmp_path / "l.csv", list(variants))))


def test_jpeg_within_measured_bound(photos_dir, tmp_path, tolerances):
    tol = tolerances[("dali_decode_jpeg_cpu", torch.uint8)]
    src = Image.open(os.path.join(photos_dir, PHOTO_NAMES[1])).crop((0, 0, 160, 120))
    names = []
    for quality in (5, 30, 75, 95):
        for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
            names.append(f"q{quality}_s{subsampling}.jpg")
            src.save(tmp_path / names[-1], quality=quality, subsampling=subsampling)
    src.convert("L").save(tmp_path / "grey.jpg", quality=80)
    names.append("grey.jpg")
    ds = IQADataset(tmp_path, write_csv(tmp_path / "l.csv", names))
    _, dali = batches(ds, "dali")
    _, pil = batches(ds, "pillow")
    for a, b in zip(dali, pil):
        assert a["names"] == b["names"]
        torch.testing.assert_close(a["images"].int(), b["images"].int(), atol=tol["atol"], rtol=tol["rtol"])


def test_corrupt_files_skipped_by_name(photos_dir, tmp_path):
    good = open(os.path.join(photos_dir, PHOTO_NAMES[0]), "rb").read()
    Image.open(io.BytesIO(good)).crop((0, 0, 40, 30)).save(tmp_path / "a.png")
    Image.open(io.BytesIO(good)).crop((0, 0, 30, 40)).save(tmp_path / "b.jpg", quality=90)
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])  # valid header: fails inside DALI
    (tmp_path / "garbage.jpg").write_bytes(b"\x00 not an image" * 30)  # unknown format: caught on the host
    jpeg = (tmp_path / "b.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    names = ["a.png", "truncated.png", "garbage.jpg", "b.jpg", "missing.png", "cut.jpg"]
    ds = IQADataset(tmp_path, write_csv(tmp_path / "l.csv", names))
    dali = assert_same_batches(ds, shuffle=False)
    assert [b["skipped"] for b in dali] == [["truncated.png"], ["garbage.jpg"], ["missing.png", "cut.jpg"]]
    assert [b["images"].shape[0] for b in dali] == [1, 1, 0]  # an all-skipped batch has B = 0
    # the loader goes on after a failed decode (the broken pipeline is replaced)
    assert [b["names"] for b in dali] == [["a.png"], ["b.jpg"], []]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (DALI mixed decoding)")
def test_gpu_decoding_png_equals_pillow(photos_dir, tmp_path):
    names = [n for n in PHOTO_NAMES if n.endswith(".png")]
    ds = IQADataset(photos_dir, write_csv(tmp_path / "l.csv", names))
    dali = list(make_loader(ds, 2, shuffle=False, seed=0, decoder="auto", device="cuda"))
    pil = list(make_loader(ds, 2, shuffle=False, seed=0, num_workers=0, decoder="pillow"))
    for a, b in zip(dali, pil):
        assert a["images"].is_cuda and a["names"] == b["names"]
        assert torch.equal(a["images"].cpu(), b["images"])


def test_multi_crop_handoff(photos_dir, tmp_path):
    if not hasattr(lmcl_fast.ops, "multi_crop"):
        pytest.skip("lmcl_fast.ops.multi_crop is not in this build yet (it lands on main from the multicrop branch)")
    from lmcl_fast.data import random_crops

    ds = IQADataset(photos_dir, write_csv(tmp_path / "l.csv", PHOTO_NAMES))
    dali = next(iter(make_loader(ds, 4, shuffle=False, seed=0, decoder="dali")))
    pil = next(iter(make_loader(ds, 4, shuffle=False, seed=0, num_workers=0, decoder="pillow")))
    crops_d, boxes_d = random_crops(dali, 8, 64, generator=torch.Generator().manual_seed(0))
    crops_p, boxes_p = random_crops(pil, 8, 64, generator=torch.Generator().manual_seed(0))
    assert crops_d.shape == (4, 8, 3, 64, 64) and crops_d.dtype == torch.float32
    assert torch.equal(boxes_d, boxes_p) and torch.equal(crops_d, crops_p)
    for b in range(4):  # every box inside its image's valid (unpadded) area
        h, w = int(dali["heights"][b]), int(dali["widths"][b])
        assert bool(((boxes_d[b, :, 0] + boxes_d[b, :, 2] <= h) & (boxes_d[b, :, 1] + boxes_d[b, :, 3] <= w)).all())
