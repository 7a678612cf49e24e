"""Input pipeline throughput: decode (+ sample_boxes + multi_crop, 8 crops of 224x224 per image, when the op is
in the build) for the Pillow DataLoader (2 worker processes) against DALI (2 decoder threads; GPU decoding on CUDA).

One timed round = one epoch over 24 photos of 500x500 (Kodak24 from shared/data/photos) as PNG, or
re-encoded as JPEG quality 90 (the format of most IQA datasets), in batches of 8.
"""
import os

import pytest
import torch
from PIL import Image

import lmcl_fast
from _harness import record
from lmcl_fast.data import IQADataset, dali_available, make_loader, random_crops

PHOTOS = os.environ.get("LMCL_PHOTOS") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                       "photos")
BATCH, CROPS, CROP_SIZE, WORKERS = 8, 8, 224, 2
WITH_CROPS = hasattr(lmcl_fast.ops, "multi_crop")


@pytest.fixture(scope="module", params=["png", "jpeg"])
def dataset(request, tmp_path_factory):
    kodak = os.path.join(PHOTOS, "kodak24")
    if not os.path.isdir(kodak):
        pytest.skip(f"pristine photos not found at {kodak}")
    names = sorted(os.listdir(kodak))
    root = kodak
    if request.param == "jpeg":
        root = str(tmp_path_factory.mktemp("jpeg"))
        names = [n.replace(".png", ".jpg") for n in names]
        for n in names:
            Image.open(os.path.join(kodak, n.replace(".jpg", ".png"))).save(os.path.join(root, n), quality=90)
    csv = os.path.join(str(tmp_path_factory.mktemp("csv")), "labels.csv")
    with open(csv, "w") as f:
        f.write("name,mos\n" + "".join(f"{n},{k}\n" for k, n in enumerate(names)))
    return request.param, IQADataset(root, csv)


@pytest.mark.parametrize("decoder", ["pillow", "dali"])
def test_input_pipeline(benchmark, dataset, decoder, bench_device):
    fmt, ds = dataset
    if decoder == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI is not installed (pip install 'lmcl_fast[dali]')")
    benchmark.group = f"input_pipeline-{fmt}-{bench_device}"
    loader = make_loader(ds, BATCH, shuffle=True, seed=0, num_workers=WORKERS, decoder=decoder, device=bench_device)
    generator = torch.Generator().manual_seed(0)

    def epoch():
        images = 0
        for batch in loader:
            images += batch["images"].shape[0]
            if WITH_CROPS:
                crops, _ = random_crops(batch, CROPS, CROP_SIZE, min_size=CROP_SIZE, generator=generator)
                assert crops.shape[1:] == (CROPS, 3, CROP_SIZE, CROP_SIZE)
        if bench_device == "cuda":
            torch.cuda.synchronize()
        return images

    assert epoch() == len(ds)  # warm-up outside the timed rounds (worker start, pipeline build)
    assert benchmark(epoch) == len(ds)
    extra = dict(decoder=decoder, format=fmt, images=len(ds), batch=BATCH, workers=WORKERS,
                 crops=f"{CROPS}x{CROP_SIZE}^2" if WITH_CROPS else "none")
    if benchmark.stats is not None:
        extra["images_per_s"] = round(len(ds) / benchmark.stats.stats.mean, 1)
    record(benchmark, bench_device, **extra)
