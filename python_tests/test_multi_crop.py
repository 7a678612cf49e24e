"""lmcl::multi_crop (SPEC §1.1): against a float64 eager reference, the grid runner of the CUDA launch,
opcheck, torch.compile, autograd, and one bad-input test per check."""
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcl_fast  # noqa: F401
from lmcl_fast.ops import multi_crop, sample_boxes
from lmcl_testing import DEVICES, MULTI_CROP_LOWP_ULPS, TOLERANCES, ulp

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference_multi_crop(images, boxes, size, mean=None, std=None, flip=None):
    """SPEC §1.1 in float64: slice, F.interpolate (bilinear, align_corners=False, antialias=False),
    flip, normalise."""
    x = images.permute(0, 3, 1, 2).double() / 255 if images.dtype == torch.uint8 else images.double()
    size = (size, size) if isinstance(size, int) else tuple(size)
    B, N = boxes.shape[:2]
    C = x.shape[1]
    out = x.new_empty((B, N, C, *size))
    for b in range(B):
        for n in range(N):
            t, l, h, w = (int(v) for v in boxes[b, n])
            crop = F.interpolate(x[b : b + 1, :, t : t + h, l : l + w], size=size, mode="bilinear",
                                 align_corners=False, antialias=False)[0]
            if flip is not None and bool(flip[b, n]):
                crop = crop.flip(-1)
            out[b, n] = crop
    mean_t = torch.tensor(mean if mean is not None else [0.0] * C, dtype=torch.float64, device=x.device)
    std_t = torch.tensor(std if std is not None else [1.0] * C, dtype=torch.float64, device=x.device)
    return (out - mean_t.view(C, 1, 1)) / std_t.view(C, 1, 1)


def assert_close_to_reference(out, ref, std=None):
    """SPEC §1.1: float32 within 1e-5 / std[c]; fp16/bf16 within one ulp of the rounded reference plus
    1e-5 / std[c] (so float32 math suffices)."""
    assert out.shape == ref.shape and out.device == ref.device
    C = ref.shape[2]
    std_t = torch.tensor(std if std is not None else [1.0] * C, dtype=torch.float64, device=ref.device)
    atol = (TOLERANCES[("multi_crop", torch.float32)]["atol"] / std_t.abs()).view(C, 1, 1)
    if out.dtype == torch.float32:
        err = (out.double() - ref).abs()
        assert bool((err <= atol).all()), f"max error {float((err / atol).max()):.3g} x the allowed bound"
    else:
        rounded = ref.to(out.dtype)
        err = (out.double() - rounded.double()).abs()
        bound = MULTI_CROP_LOWP_ULPS * ulp(rounded) + atol
        assert bool((err <= bound).all()), f"max error {float((err / bound).max()):.3g} x the allowed bound"


def make_images(kind, B, H, W, C, device="cpu"):
    if kind == "uint8":
        return torch.randint(0, 256, (B, H, W, C), dtype=torch.uint8, device=device)
    return torch.rand((B, C, H, W), dtype=torch.float32, device=device)


def edge_boxes(B, H, W):
    """1x1 boxes, full image, border-touching, down- and up-scaling boxes: N = 6 per image."""
    rows = [
        [0, 0, 1, 1],
        [H - 1, W - 1, 1, 1],
        [0, 0, H, W],
        [H - 5, 0, 5, W],
        [1, 2, H - 3, 4],
        [2, W - 7, 3, 7],
    ]
    return torch.tensor([rows] * B, dtype=torch.int64)


def sample_inputs(device, kind, C, size=(5, 7), flip=True, normalise=True, B=2, H=13, W=17):
    images = make_images(kind, B, H, W, C, device)
    boxes = edge_boxes(B, H, W).to(device)
    flips = (torch.arange(B * boxes.shape[1], device=device).view(B, -1) % 2 == 0) if flip else None
    mean = MEAN[:C] if normalise else None
    std = STD[:C] if normalise else None
    return images, boxes, size, mean, std, flips


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["uint8", "float32"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("size", [(5, 7), (19, 11), 13], ids=["down", "up-nonsquare", "int"])
def test_matches_reference(device, kind, C, out_dtype, size):
    images, boxes, size, mean, std, flips = sample_inputs(device, kind, C, size=size)
    out = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert_close_to_reference(out, reference_multi_crop(images, boxes, size, mean, std, flips), std)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_defaults_no_flip_no_normalisation_int32_boxes(device, kind):
    images, boxes, size, _, _, _ = sample_inputs(device, kind, 3, flip=False, normalise=False)
    out = multi_crop(images, boxes.int(), size)
    assert out.dtype == torch.float32
    assert_close_to_reference(out, reference_multi_crop(images, boxes, size))


def _strided_variants(images):
    """Non-contiguous views of the same pixels: (name, tensor)."""
    if images.dtype == torch.uint8:  # [B, H, W, C]
        B, H, W, C = images.shape
        planar = images.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # NHWC view of NCHW memory
        wide = torch.zeros((B, H, 2 * W, C + 1), dtype=images.dtype, device=images.device)
        wide[:, :, ::2, :C] = images
        return [("planar", planar), ("column-step-and-channel-pad", wide[:, :, ::2, :C])]
    B, C, H, W = images.shape
    big = torch.zeros((2 * B, C, H + 3, W + 5), dtype=images.dtype, device=images.device)
    big[::2, :, 3:, 5:] = images
    return [("channels-last", images.contiguous(memory_format=torch.channels_last)),
            ("sliced", big[::2, :, 3:, 5:]),
            ("transposed-hw", images.transpose(2, 3).contiguous().transpose(2, 3))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_strided_inputs_read_through_strides(device, kind):
    images, boxes, size, mean, std, flips = sample_inputs(device, kind, 3)
    expected = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips)
    for name, view in _strided_variants(images):
        assert not view.is_contiguous(), name
        out = multi_crop(view, boxes, size, mean=mean, std=std, flip=flips)
        assert torch.equal(out, expected), name
    # non-contiguous boxes and flip
    boxes_nc = torch.stack([boxes, torch.zeros_like(boxes)], dim=2)[:, :, 0]
    flips_nc = torch.stack([flips, ~flips], dim=-1)[..., 0]
    assert not boxes_nc.is_contiguous() and not flips_nc.is_contiguous()
    assert torch.equal(multi_crop(images, boxes_nc, size, mean=mean, std=std, flip=flips_nc), expected)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["uint8", "float32"]),
    C=st.sampled_from([1, 3]),
    H=st.integers(1, 40),
    W=st.integers(1, 40),
    S_h=st.integers(1, 30),
    S_w=st.integers(1, 30),
    out_dtype=st.sampled_from(OUT_DTYPES),
)
def test_random_cases_match_reference(seed, kind, C, H, W, S_h, S_w, out_dtype):
    g = torch.Generator().manual_seed(seed)
    B, N = 2, 3
    images = (torch.randint(0, 256, (B, H, W, C), generator=g, dtype=torch.uint8) if kind == "uint8"
              else torch.rand((B, C, H, W), generator=g))
    tops = torch.randint(0, H, (B, N), generator=g)
    lefts = torch.randint(0, W, (B, N), generator=g)
    heights = 1 + (torch.rand((B, N), generator=g) * (H - tops)).long()
    widths = 1 + (torch.rand((B, N), generator=g) * (W - lefts)).long()
    boxes = torch.stack([tops, lefts, heights, widths], dim=-1)
    flips = torch.rand((B, N), generator=g) < 0.5
    out = multi_crop(images, boxes, (S_h, S_w), flip=flips, out_dtype=out_dtype)
    assert_close_to_reference(out, reference_multi_crop(images, boxes, (S_h, S_w), flip=flips))


def test_real_photos(photos_dir):
    """Kodak/McMaster photos decoded to uint8 HWC, boxes from sample_boxes, ImageNet normalisation."""
    from PIL import Image

    paths = sorted(glob.glob(os.path.join(photos_dir, "**", "*.png"), recursive=True))[:2]
    if len(paths) < 2:
        pytest.skip("need two photos")
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((96, 80))) for p in paths]
    images = torch.from_numpy(np.stack(arrays))  # [2, 80, 96, 3]
    boxes = sample_boxes([80, 80], [96, 96], 4, min_size=8, generator=torch.Generator().manual_seed(3))
    out = multi_crop(images, boxes, (24, 32), mean=MEAN, std=STD, out_dtype=torch.bfloat16)
    assert_close_to_reference(out, reference_multi_crop(images, boxes, (24, 32), MEAN, STD))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_empty_inputs(device, kind):
    images = make_images(kind, 2, 6, 5, 3, device)
    out = multi_crop(images, torch.zeros((2, 0, 4), dtype=torch.int64, device=device), (4, 3))
    assert out.shape == (2, 0, 3, 4, 3)
    images0 = make_images(kind, 0, 6, 5, 3, device)
    out = multi_crop(images0, torch.zeros((0, 3, 4), dtype=torch.int64, device=device), 4)
    assert out.shape == (0, 3, 3, 4, 4)


def test_cpu_deterministic():
    images, boxes, size, mean, std, flips = sample_inputs("cpu", "uint8", 3, size=(31, 29), H=40, W=50)
    a = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips)
    b = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b) and torch.equal(a, c)


# ---- autograd (float32 images) ----

def _grad_inputs(device, C=3, flip=True):
    images, boxes, size, mean, std, flips = sample_inputs(device, "float32", C, size=(6, 9), flip=flip)
    return images.requires_grad_(), boxes, size, mean, std, flips


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_matches_reference(device, C, out_dtype):
    images, boxes, size, mean, std, flips = _grad_inputs(device, C)
    out = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, out_dtype=out_dtype)
    g = torch.randn(out.shape, device=device).to(out_dtype)
    (grad,) = torch.autograd.grad(out, images, g)
    x64 = images.detach().double().requires_grad_()
    ref = reference_multi_crop(x64, boxes, size, mean, std, flips)
    (grad_ref,) = torch.autograd.grad(ref, x64, g.double())
    torch.testing.assert_close(grad.double(), grad_ref, **TOLERANCES[("multi_crop backward", torch.float32)])


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_matches_reference(device):
    """The backward is linear in the output gradient; its own gradient is the forward with mean 0."""
    images, boxes, size, mean, std, flips = _grad_inputs(device)
    out = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips)
    g = torch.randn(out.shape, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(out, images, g, create_graph=True)
    w = torch.randn(grad.shape, device=device)
    (gg,) = torch.autograd.grad((grad * w).sum(), g)
    x64 = images.detach().double().requires_grad_()
    g64 = g.detach().double().requires_grad_()
    (grad_ref,) = torch.autograd.grad(reference_multi_crop(x64, boxes, size, mean, std, flips), x64, g64,
                                      create_graph=True)
    (gg_ref,) = torch.autograd.grad((grad_ref * w.double()).sum(), g64)
    torch.testing.assert_close(gg.double(), gg_ref, **TOLERANCES[("multi_crop backward", torch.float32)])


def test_uint8_images_are_not_differentiable():
    images, boxes, size, mean, std, flips = sample_inputs("cpu", "uint8", 3)
    assert not multi_crop(images, boxes, size, mean=mean, std=std, flip=flips).requires_grad


# ---- opcheck and torch.compile ----

def _opcheck_samples(device):
    samples = []
    for kind in ("uint8", "float32"):
        for C, out_dtype in ((3, torch.float32), (1, torch.bfloat16)):
            images, boxes, size, mean, std, flips = sample_inputs(device, kind, C, size=(4, 6))
            if kind == "float32":
                images.requires_grad_()
            samples.append((images, boxes, list(size), list(mean), list(std), flips, out_dtype))
    images, boxes, size, _, _, _ = sample_inputs(device, "float32", 3, flip=False, normalise=False)
    samples.append((images, boxes, [3, 3], None, None, None, torch.float16))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.lmcl.multi_crop.default, args)
    grad = torch.randn((2, 6, 3, 4, 6), device=device)
    boxes = edge_boxes(2, 13, 17).to(device)
    flips = torch.zeros((2, 6), dtype=torch.bool, device=device)
    torch.library.opcheck(torch.ops.lmcl._multi_crop_backward.default,
                          (grad.requires_grad_(), boxes, list(STD), flips, 13, 17))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    images, boxes, size, mean, std, flips = sample_inputs("cpu", "uint8", 3)

    def fn(images, boxes, flips):
        return multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, out_dtype=torch.bfloat16) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    assert torch.equal(compiled(images, boxes, flips), fn(images, boxes, flips))
    # a second shape (recompiles or reuses the dynamic graph)
    images2 = make_images("uint8", 3, 15, 11, 3)
    boxes2 = edge_boxes(3, 15, 11)
    flips2 = torch.ones((3, 6), dtype=torch.bool)
    assert torch.equal(compiled(images2, boxes2, flips2), fn(images2, boxes2, flips2))


def test_torch_compile_backward():
    torch._dynamo.reset()
    images, boxes, size, mean, std, flips = _grad_inputs("cpu")

    def loss(images):
        return (multi_crop(images, boxes, size, mean=mean, std=std, flip=flips) ** 2).sum()

    (g_eager,) = torch.autograd.grad(loss(images), images)
    (g_comp,) = torch.autograd.grad(torch.compile(loss, fullgraph=True)(images), images)
    torch.testing.assert_close(g_comp, g_eager, **TOLERANCES[("multi_crop backward", torch.float32)])


# ---- grid runner: the CUDA launch's index mapping, run on the CPU ----

@pytest.mark.parametrize("kind", ["uint8", "float32"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("threads,max_blocks", [(256, 4096), (32, 3), (7, 1)])
def test_grid_runner_matches_cpu(grid_runner, kind, C, threads, max_blocks):
    images, boxes, size, mean, std, flips = sample_inputs("cpu", kind, C, size=(5, 7))
    if kind == "float32":
        images = images.contiguous(memory_format=torch.channels_last)
    for out_dtype in OUT_DTYPES:
        expected = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, out_dtype=out_dtype)
        got = grid_runner.multi_crop(images, boxes, list(size), list(mean), list(std), flips, out_dtype, threads,
                                     max_blocks)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("threads,max_blocks", [(256, 4096), (32, 3), (7, 1)])
@pytest.mark.parametrize("grad_dtype", OUT_DTYPES, ids=str)
def test_grid_runner_backward_matches_cpu(grid_runner, threads, max_blocks, grad_dtype):
    # Every backward Body the CUDA file dispatches (one per output-gradient dtype), grid wrapping.
    _, boxes, size, mean, std, flips = sample_inputs("cpu", "float32", 3, size=(5, 7))
    grad = torch.randn((2, 6, 3, 5, 7)).to(grad_dtype)
    expected = torch.ops.lmcl._multi_crop_backward.default(grad, boxes, list(std), flips, 13, 17)
    got = grid_runner.multi_crop_backward(grad, boxes, list(std), flips, 13, 17, threads, max_blocks)
    assert got.dtype == expected.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOLERANCES[("multi_crop backward", torch.float32)])


# Every CPU forward path (cpu/simd.h: LMCL_CPU_SIMD caps the clone; a level the CPU lacks runs the best it
# has), at sizes with whole vector blocks and tails, crops shrunk more than 2x (gathered column taps) and
# enlarged (permuted), mirrored or not: bit-identical to the per-pixel body of the CUDA launch.
_SIMD_BOXES = torch.tensor([[[0, 0, 61, 97], [3, 5, 30, 40], [10, 7, 9, 12], [0, 0, 61, 20]],
                            [[1, 2, 57, 90], [5, 30, 33, 67], [0, 0, 1, 1], [20, 3, 41, 94]]])


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


@pytest.mark.parametrize("simd", ["baseline", "avx2", "avx512", "avx512bf16"])
@pytest.mark.parametrize("kind", ["uint8", "float32", "float32-nhwc"])
def test_grid_runner_matches_every_cpu_path(grid_runner, monkeypatch, simd, kind):
    monkeypatch.setenv("LMCL_CPU_SIMD", simd)
    g = torch.Generator().manual_seed(1)
    flips = torch.tensor([[True, False, True, False], [False, True, False, True]])
    for C in (1, 3):
        if kind == "uint8":
            images = torch.randint(0, 256, (2, 61, 97, C), dtype=torch.uint8, generator=g)
        else:
            images = torch.rand((2, C, 61, 97), generator=g)
            # Denormals and a NaN: the vector half stores must round them as c10::BFloat16 / c10::Half do.
            images[0, :, 4:6, 10:12] = 1e-39
            images[1, 0, 30, 50] = float("nan")
            if kind == "float32-nhwc":
                images = images.contiguous(memory_format=torch.channels_last)
        mean, std = (list(MEAN[:C]), list(STD[:C])) if kind == "uint8" else (None, None)
        for out_dtype in OUT_DTYPES:
            for memory_format in (torch.contiguous_format, torch.channels_last):
                expected = multi_crop(images, _SIMD_BOXES, (37, 45), mean=mean, std=std, flip=flips,
                                      out_dtype=out_dtype, memory_format=memory_format)
                got = grid_runner.multi_crop(images, _SIMD_BOXES, [37, 45], mean, std, flips, out_dtype, 256, 4096,
                                             memory_format=memory_format)
                assert torch.equal(_bits(got), _bits(expected)), (C, out_dtype, memory_format)


# uint8 samples whose outputs fall in the float32 denormal range (a huge std, or a denormal shift): the
# AVX512-BF16 clone stores bfloat16 without its denormal check only where no output can be one, and here
# VCVTNEPS2BF16 would flush them to zero; every path must still round them as c10::BFloat16 does.
@pytest.mark.parametrize("simd", ["baseline", "avx2", "avx512", "avx512bf16"])
@pytest.mark.parametrize("mean, std", [((0.0, 0.5, 0.0), (1e36, 3e36, 5e35)), ((1e-39, 0.0, -3e-39), (1.0, 1.0, 1.0))],
                         ids=["tiny-scale", "denormal-shift"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_uint8_denormal_outputs_match_the_per_pixel_body(grid_runner, monkeypatch, simd, mean, std, memory_format):
    monkeypatch.setenv("LMCL_CPU_SIMD", simd)
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2, 61, 97, 3), dtype=torch.uint8, generator=g)
    images[:, :8] = 0  # zero samples: outputs of exactly the shift
    flips = torch.tensor([[True, False, True, False], [False, True, False, True]])
    expected = multi_crop(images, _SIMD_BOXES, (37, 45), mean=mean, std=std, flip=flips, out_dtype=torch.bfloat16,
                          memory_format=memory_format)
    got = grid_runner.multi_crop(images, _SIMD_BOXES, [37, 45], list(mean), list(std), flips, torch.bfloat16, 256,
                                 4096, memory_format=memory_format)
    denormal = (expected.float() != 0) & (expected.float().abs() < torch.finfo(torch.float32).tiny)
    assert denormal.any()
    assert torch.equal(_bits(got), _bits(expected))


def test_grid_runner_backward_empty(grid_runner):
    no_boxes = torch.zeros((2, 0, 4), dtype=torch.int64)
    got = grid_runner.multi_crop_backward(torch.zeros((2, 0, 3, 5, 7)), no_boxes, None, None, 13, 17, 32, 2)
    assert torch.equal(got, torch.zeros(2, 3, 13, 17))


def test_grid_runner_empty_and_bad_boxes(grid_runner):
    images = make_images("uint8", 2, 6, 5, 3)
    out = grid_runner.multi_crop(images, torch.zeros((2, 0, 4), dtype=torch.int64), [4, 3], None, None, None,
                                 torch.float32, 32, 2)
    assert out.shape == (2, 0, 3, 4, 3)
    boxes = torch.tensor([[[0, 0, 6, 5], [0, 0, 2, 2]], [[1, 1, 2, 2], [5, 0, 2, 1]]])
    with pytest.raises(ValueError, match=r"boxes\[1, 1\] = .*\(5, 0, 2, 1\).*6 x 5"):
        grid_runner.multi_crop(images, boxes, [4, 3], None, None, None, torch.float32, 32, 2)


def test_grid_runner_kernel_clamps_unchecked_boxes(grid_runner):
    """With the box check skipped, wild boxes read the clamped box (never outside the image)."""
    H, W = 9, 11
    images = make_images("uint8", 1, H, W, 3)
    wild = torch.tensor([[[-5, -3, 4, 4], [7, 9, 100, 100], [2, 3, 0, -4], [2**40, -(2**40), 3, 3]]])
    top = wild[..., 0].clamp(0, H - 1)
    left = wild[..., 1].clamp(0, W - 1)
    height = torch.minimum(wild[..., 2].clamp_min(1), H - top)
    width = torch.minimum(wild[..., 3].clamp_min(1), W - left)
    clamped = torch.stack([top, left, height, width], dim=-1)
    got = grid_runner.multi_crop_unchecked(images, wild, [5, 6])
    assert torch.equal(got, multi_crop(images, clamped, (5, 6)))


# ---- bad inputs: one per check ----

def _good():
    images, boxes, size, mean, std, flips = sample_inputs("cpu", "uint8", 3)
    return dict(images=images, boxes=boxes, size=size, mean=mean, std=std, flip=flips, out_dtype=torch.float32)


def _with(**changes):
    kwargs = _good()
    kwargs.update(changes)
    return kwargs


BAD_INPUTS = [
    ("images-dtype", lambda: _with(images=torch.zeros((2, 13, 17, 3), dtype=torch.int16)), TypeError, "images"),
    ("images-float64", lambda: _with(images=torch.zeros((2, 3, 13, 17), dtype=torch.float64)), TypeError, "images"),
    ("images-rank", lambda: _with(images=torch.zeros((13, 17, 3), dtype=torch.uint8)), RuntimeError, "images"),
    ("images-channels", lambda: _with(images=torch.zeros((2, 13, 17, 2), dtype=torch.uint8)), RuntimeError,
     "images"),
    ("boxes-dtype", lambda: _with(boxes=_good()["boxes"].float()), TypeError, "boxes"),
    ("boxes-shape", lambda: _with(boxes=_good()["boxes"][..., :3]), RuntimeError, "boxes"),
    ("boxes-batch", lambda: _with(boxes=_good()["boxes"][:1]), RuntimeError, "boxes"),
    ("boxes-device", lambda: _with(boxes=_good()["boxes"].to("meta")), RuntimeError, "boxes"),
    ("flip-dtype", lambda: _with(flip=_good()["flip"].int()), TypeError, "flip"),
    ("flip-shape", lambda: _with(flip=_good()["flip"][:, :2]), RuntimeError, "flip"),
    ("flip-device", lambda: _with(flip=_good()["flip"].to("meta")), RuntimeError, "flip"),
    ("size-length", lambda: _with(size=(3, 4, 5)), ValueError, "size"),
    ("size-positive", lambda: _with(size=(0, 4)), ValueError, "size"),
    ("mean-length", lambda: _with(mean=(0.5, 0.5)), ValueError, "mean"),
    ("std-length", lambda: _with(std=(0.5,)), ValueError, "std"),
    ("std-zero", lambda: _with(std=(0.5, 0.0, 0.5)), ValueError, "std"),
    ("out-dtype", lambda: _with(out_dtype=torch.float64), TypeError, "out_dtype"),
    ("box-negative-top", lambda: _with(boxes=_bad_box([-1, 0, 2, 2])), ValueError, r"boxes\[1, 2\]"),
    ("box-zero-height", lambda: _with(boxes=_bad_box([0, 0, 0, 2])), ValueError, r"boxes\[1, 2\]"),
    ("box-past-bottom", lambda: _with(boxes=_bad_box([12, 0, 2, 2])), ValueError, r"boxes\[1, 2\]"),
    ("box-past-right", lambda: _with(boxes=_bad_box([0, 10, 2, 8])), ValueError, r"boxes\[1, 2\]"),
]


def _bad_box(row):
    boxes = _good()["boxes"].clone()
    boxes[1, 2] = torch.tensor(row)
    return boxes


@pytest.mark.parametrize("make,exc,match", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise(make, exc, match):
    kwargs = make()
    with pytest.raises(exc, match=match) as info:
        multi_crop(**kwargs)
    assert str(info.value).lstrip().startswith("multi_crop") or "multi_crop:" in str(info.value)


def test_bad_backward_inputs_raise():
    boxes = edge_boxes(2, 13, 17)
    with pytest.raises(TypeError, match="grad"):
        torch.ops.lmcl._multi_crop_backward.default(torch.zeros((2, 6, 3, 4, 4), dtype=torch.float64), boxes,
                                                    None, None, 13, 17)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.lmcl._multi_crop_backward.default(torch.zeros((2, 6, 2, 4, 4)), boxes, None, None, 13, 17)
    with pytest.raises(RuntimeError, match="boxes"):
        torch.ops.lmcl._multi_crop_backward.default(torch.zeros((2, 5, 3, 4, 4)), boxes, None, None, 13, 17)
    with pytest.raises(ValueError, match="height and width"):
        torch.ops.lmcl._multi_crop_backward.default(torch.zeros((2, 6, 3, 4, 4)), boxes, None, None, -1, 17)
    with pytest.raises(ValueError, match=r"boxes\[0, 1\]"):
        torch.ops.lmcl._multi_crop_backward.default(torch.zeros((2, 6, 3, 4, 4)), boxes, None, None, 12, 17)


def test_fake_mirrors_checks():
    """The fake kernel raises the same errors under torch.compile (no data needed for metadata rules)."""
    torch._dynamo.reset()
    kwargs = _with(std=(0.5, 0.0, 0.5))

    @torch.compile(fullgraph=True)
    def fn(images, boxes, flip):
        return multi_crop(images, boxes, kwargs["size"], mean=kwargs["mean"], std=kwargs["std"], flip=flip)

    with pytest.raises(Exception, match="std must be non-zero"):
        fn(kwargs["images"], kwargs["boxes"], kwargs["flip"])


# ---- CUDA (skipped without a GPU) ----

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("kind", ["uint8", "float32"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_cuda_matches_cpu(kind, out_dtype):
    images, boxes, size, mean, std, flips = sample_inputs("cpu", kind, 3, size=(9, 11))
    cpu = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, out_dtype=out_dtype)
    gpu = multi_crop(images.cuda(), boxes.cuda(), size, mean=mean, std=std, flip=flips.cuda(), out_dtype=out_dtype)
    # nvcc contracts multiply-adds into FMAs, so the last bits may differ: hold the GPU result to the
    # SPEC bound around the CPU result (float32: 1e-5 / std; fp16/bf16: one ulp).
    assert_close_to_reference(gpu.cpu(), cpu.double(), std)


@cuda
def test_cuda_bad_box_raises():
    kwargs = _with(boxes=_bad_box([12, 0, 2, 2]))
    kwargs = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=r"boxes\[1, 2\]"):
        multi_crop(**kwargs)


@cuda
def test_cuda_backward_alerts_under_deterministic_algorithms():
    # The CUDA backward scatters with float atomics: torch.use_deterministic_algorithms must raise.
    images, boxes, size, mean, std, flips = sample_inputs("cuda", "float32", 3)
    images = images.detach().requires_grad_(True)
    out = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="_multi_crop_backward"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)


# ---- channels-last output (memory_format=torch.channels_last) ----

def _nhwc_strides(out):
    B, N, C, S_h, S_w = out.shape
    return (N * S_h * S_w * C, S_h * S_w * C, 1, S_w * C, C)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["uint8", "float32"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_channels_last_output_same_values(device, kind, C, out_dtype):
    images, boxes, size, mean, std, flips = sample_inputs(device, kind, C, size=(6, 9))
    want = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, out_dtype=out_dtype)
    out = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, out_dtype=out_dtype,
                     memory_format=torch.channels_last)
    assert out.shape == want.shape and out.stride() == _nhwc_strides(out)
    assert out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)  # the network's input, no copy
    assert torch.equal(out, want)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_backward_same_gradient(device):
    images, boxes, size, mean, std, flips = _grad_inputs(device)
    g = torch.randn((2, 6, 3, *size), device=device)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, memory_format=fmt)
        # The upstream gradient in the output's own layout, as a channels-last network hands it back.
        (grad,) = torch.autograd.grad(out, images, g.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
                                      if fmt == torch.channels_last else g)
        grads.append(grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.lmcl.multi_crop.default, args, {"memory_format": torch.channels_last})
    grad = torch.randn((2, 6, 4, 6, 3), device=device).permute(0, 1, 4, 2, 3)  # NHWC-strided gradient
    boxes = edge_boxes(2, 13, 17).to(device)
    torch.library.opcheck(torch.ops.lmcl._multi_crop_backward.default,
                          (grad.requires_grad_(), boxes, list(STD), None, 13, 17))


def test_channels_last_torch_compile():
    torch._dynamo.reset()
    images, boxes, size, mean, std, flips = _grad_inputs("cpu")

    def fn(images):
        return multi_crop(images, boxes, size, mean=mean, std=std, flip=flips, memory_format=torch.channels_last)

    out = torch.compile(fn, fullgraph=True)(images)
    assert out.stride() == _nhwc_strides(out) and torch.equal(out, fn(images))


def test_memory_format_rejects_other_formats():
    images, boxes, size, mean, std, flips = sample_inputs("cpu", "uint8", 3)
    with pytest.raises(ValueError, match="memory_format"):
        multi_crop(images, boxes, size, memory_format=torch.preserve_format)


@pytest.mark.parametrize("kind", ["uint8", "float32"])
@pytest.mark.parametrize("threads,max_blocks", [(256, 4096), (7, 1)])
def test_grid_runner_channels_last(grid_runner, kind, threads, max_blocks):
    """The CUDA launch bodies write NHWC crops and read an NHWC-strided gradient as the CPU kernel does."""
    images, boxes, size, mean, std, flips = sample_inputs("cpu", kind, 3, size=(5, 7))
    expected = multi_crop(images, boxes, size, mean=mean, std=std, flip=flips)
    got = grid_runner.multi_crop(images, boxes, list(size), list(mean), list(std), flips, torch.float32, threads,
                                 max_blocks, memory_format=torch.channels_last)
    assert got.stride() == _nhwc_strides(got) and torch.equal(got, expected)
    grad = torch.randn((2, 6, 5, 7, 3)).permute(0, 1, 4, 2, 3)
    want = torch.ops.lmcl._multi_crop_backward.default(grad.contiguous(), boxes, list(std), flips, 13, 17)
    back = grid_runner.multi_crop_backward(grad, boxes, list(std), flips, 13, 17, threads, max_blocks)
    torch.testing.assert_close(back, want, **TOLERANCES[("multi_crop backward", torch.float32)])
