"""multi_crop: ours vs the eager reference (float32) vs torch.compile of that reference.

The compiled contender compiles the per-crop function (convert, bilinear resize, normalise) with
dynamic=True and loops over the boxes in Python: compiling the whole per-box loop would unroll B*N = 256
crops whose shapes come from box values into one graph, which is not a workable contender.
"""

import pytest
import torch
import torch.nn.functional as F

from _cost import multi_crop_bytes
from _harness import record, run_synced
from lmcl_fast.ops import multi_crop, sample_boxes

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _crop_eager(crop_u8, size, mean, std):
    """One crop: uint8 [1, C, h, w] view -> normalised float32 [C, S_h, S_w] (the test reference, in float32)."""
    x = crop_u8.float().div_(255)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    return (x - mean) / std


def _loop(crop_fn, x, box_rows, flips, size, mean, std):
    """crop_fn on every box of x [B, C, H, W] (a view of the NHWC uint8 batch, or float32 images)."""
    out = []
    for b, row in enumerate(box_rows):
        for n, (t, l, h, w) in enumerate(row):
            crop = crop_fn(x[b : b + 1, :, t : t + h, l : l + w], size, mean, std)
            out.append(crop.flip(-1) if flips[b][n] else crop)
    return torch.stack(out).view(len(box_rows), len(box_rows[0]), *out[0].shape)


def _case(B, H, W, N, S, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=g).to(device)
    boxes = sample_boxes([H] * B, [W] * B, N, generator=g).to(device)
    flips = (torch.rand((B, N), generator=g) < 0.5).to(device)
    return images, boxes, flips


def _contender(name, images, boxes, flips, size, out_dtype):
    device = images.device
    mean = torch.tensor(MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(STD, device=device).view(3, 1, 1)
    box_rows, flip_rows = boxes.tolist(), flips.tolist()  # host copies made outside the timed region
    x = images.permute(0, 3, 1, 2)  # [B, C, H, W] view of the NHWC uint8 batch
    if name == "lmcl":
        return lambda: multi_crop(images, boxes, size, mean=MEAN, std=STD, flip=flips, out_dtype=out_dtype)
    if name == "eager":
        return lambda: _loop(_crop_eager, x, box_rows, flip_rows, size, mean, std).to(out_dtype)
    torch._dynamo.reset()
    compiled = torch.compile(_crop_eager, dynamic=True)
    fn = lambda: _loop(compiled, x, box_rows, flip_rows, size, mean, std).to(out_dtype)  # noqa: E731
    fn()  # warm-up: compile outside the timed region
    return fn


def _run(benchmark, contender, device, images, boxes, flips, size, out_dtype):
    fn = run_synced(_contender(contender, images, boxes, flips, size, out_dtype), device)
    out = benchmark(fn)
    assert out.shape == (*boxes.shape[:2], 3, *size) and out.dtype == out_dtype
    nbytes = multi_crop_bytes(boxes, 3, size, 1, out.element_size())
    extra = dict(bytes=nbytes, contender=contender)
    if benchmark.stats is not None:
        extra["GB/s"] = round(nbytes / benchmark.stats.stats.min / 1e9, 3)
    record(benchmark, device, **extra)
    return out


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.benchmark(group="multi_crop-B32-384x512x3-uint8-N8-224-f32-cpu")
@pytest.mark.parametrize("contender", ["lmcl", "eager", "compiled"])
def test_multi_crop_cpu(benchmark, contender, two_threads):
    images, boxes, flips = _case(32, 384, 512, 8, 224, "cpu")
    _run(benchmark, contender, "cpu", images, boxes, flips, (224, 224), torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.benchmark(group="multi_crop-B64-512x384x3-uint8-N8-224-bf16-cuda")
@pytest.mark.parametrize("contender", ["lmcl", "eager", "compiled"])
def test_multi_crop_cuda(benchmark, contender):
    images, boxes, flips = _case(64, 512, 384, 8, 224, "cuda")
    _run(benchmark, contender, "cuda", images, boxes, flips, (224, 224), torch.bfloat16)


@pytest.mark.benchmark(group="multi_crop-B32-384x512x3-uint8-N8-224-bf16-cpu")
@pytest.mark.parametrize("contender", ["lmcl", "eager"])
def test_multi_crop_cpu_bf16(benchmark, contender, two_threads):
    if contender == "eager" and benchmark.disabled:
        pytest.skip("the float32 case already runs the eager loop once; this one only adds a cast")
    images, boxes, flips = _case(32, 384, 512, 8, 224, "cpu")
    _run(benchmark, contender, "cpu", images, boxes, flips, (224, 224), torch.bfloat16)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("contender", ["lmcl", "fill_"])
def test_multi_crop_cpu_reused_output(benchmark, contender, out_dtype, two_threads):
    """B=4 (19 MB float32 output): the allocator reuses the freed output block, so no page faults; the
    kernel against writing the same bytes with fill_ (this machine's write floor for that buffer)."""
    benchmark.group = f"multi_crop-B4-reused-output-{str(out_dtype)[6:]}-cpu"
    images, boxes, flips = _case(4, 384, 512, 8, 224, "cpu", seed=1)
    if contender == "lmcl":
        out = benchmark(lambda: multi_crop(images, boxes, (224, 224), mean=MEAN, std=STD, flip=flips,
                                           out_dtype=out_dtype))
    else:
        buf = torch.empty((4, 8, 3, 224, 224), dtype=out_dtype)
        out = benchmark(lambda: buf.fill_(1.0))
    nbytes = out.numel() * out.element_size()
    extra = dict(bytes_written=nbytes, contender=contender)
    if benchmark.stats is not None:
        extra["GB/s written"] = round(nbytes / benchmark.stats.stats.min / 1e9, 2)
    record(benchmark, "cpu", **extra)


@pytest.mark.benchmark(group="multi_crop-backward-B8-384x512x3-float32-N8-224-cpu")
@pytest.mark.parametrize("contender", ["lmcl", "eager"])
def test_multi_crop_cpu_backward(benchmark, contender, two_threads):
    """Gradient w.r.t. float32 images [B, 3, H, W] (autograd.grad only; the forward builds the graph
    outside the timed region). B=8 keeps the eager contender's CI smoke run short."""
    images, boxes, flips = _case(8, 384, 512, 8, 224, "cpu")
    x = images.permute(0, 3, 1, 2).float().div(255).contiguous().requires_grad_(True)
    grad = torch.randn(8, 8, 3, 224, 224)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    box_rows, flip_rows = boxes.tolist(), flips.tolist()

    def crop_fn(crop, size, mean, std):
        return (F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=False)[0] - mean) / std

    if contender == "lmcl":
        out = multi_crop(x, boxes, (224, 224), mean=MEAN, std=STD, flip=flips)
    else:
        out = _loop(crop_fn, x, box_rows, flip_rows, (224, 224), mean, std)
    (g,) = benchmark(lambda: torch.autograd.grad(out, x, grad, retain_graph=True))
    assert g.shape == x.shape
    record(benchmark, "cpu", contender=contender)

