"""crop_saliency (SPEC §1.3): box means from a float64 summed-area table, and their gradient."""

import math

import pytest
import torch

from lmcl_fast import ops
from lmcl_testing import DEVICES, TOLERANCES

TOL = TOLERANCES[("crop_saliency", torch.float32)]
GRAD_TOL = TOLERANCES[("crop_saliency_backward", torch.float32)]
BOX_DTYPES = [torch.int64, torch.int32]


def reference_crop_saliency(saliency: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """SPEC §1.3 read literally: the float64 mean of each box's slice (differentiable)."""
    s = saliency.to(torch.float64)
    B, N = boxes.shape[:2]
    means = [
        s[b, t : t + h, l : l + w].mean()
        for b in range(B)
        for t, l, h, w in boxes[b].tolist()
    ]
    return torch.stack(means).reshape(B, N) if means else s.new_empty((B, N))


def random_boxes(B, N, H, W, dtype=torch.int64, device="cpu"):
    h = torch.randint(1, H + 1, (B, N))
    w = torch.randint(1, W + 1, (B, N))
    t = (torch.rand(B, N) * (H - h + 1)).floor().long()
    l = (torch.rand(B, N) * (W - w + 1)).floor().long()
    return torch.stack([t, l, h, w], dim=-1).to(device=device, dtype=dtype)


def edge_boxes(B, H, W, dtype=torch.int64, device="cpu"):
    """1x1 boxes in all four corners, the full image, and strips along each border."""
    rows = [
        (0, 0, 1, 1), (0, W - 1, 1, 1), (H - 1, 0, 1, 1), (H - 1, W - 1, 1, 1),
        (0, 0, H, W),
        (0, 0, 1, W), (H - 1, 0, 1, W), (0, 0, H, 1), (0, W - 1, H, 1),
    ]
    return torch.tensor([rows] * B, dtype=dtype, device=device)


def sample_inputs(device, box_dtype=torch.int64, requires_grad=False):
    """(saliency, boxes) pairs: contiguous and strided maps, random and edge boxes, strided boxes, N = 2."""
    samples = []
    s = torch.rand(2, 7, 9, device=device)
    samples.append((s, random_boxes(2, 5, 7, 9, box_dtype, device)))
    samples.append((s, edge_boxes(2, 7, 9, box_dtype, device)))
    # Transposed (non-contiguous) map and boxes that come from a transposed [B, 4, N] tensor.
    st = torch.rand(3, 11, 6, device=device).transpose(1, 2)
    bt = random_boxes(3, 2, 6, 11, box_dtype, device).transpose(1, 2).contiguous().transpose(1, 2)
    samples.append((st, bt))
    # A sliced map (row stride 2, column offset) and a single-pixel image.
    samples.append((torch.rand(1, 10, 13, device=device)[:, ::2, 1:], random_boxes(1, 4, 5, 12, box_dtype, device)))
    samples.append((torch.rand(2, 1, 1, device=device), edge_boxes(2, 1, 1, box_dtype, device)))
    if requires_grad:
        samples = [(s.detach().clone().requires_grad_(), b) for s, b in samples]
    return samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("box_dtype", BOX_DTYPES)
def test_matches_reference(device, box_dtype):
    for saliency, boxes in sample_inputs(device, box_dtype):
        out = ops.crop_saliency(saliency, boxes)
        assert out.dtype == torch.float32 and out.shape == boxes.shape[:2]
        torch.testing.assert_close(out.double(), reference_crop_saliency(saliency, boxes), **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_many_boxes_sharing_rows(device):
    """Many boxes per image on a short map: most table rows are read by several boxes, as tops and
    bottoms at once (the CPU sweep handles all events of a row together)."""
    saliency = torch.rand(2, 12, 40, device=device, requires_grad=True)
    boxes = random_boxes(2, 150, 12, 40, device=device)
    out = ops.crop_saliency(saliency, boxes)
    ref = reference_crop_saliency(saliency, boxes)
    torch.testing.assert_close(out.double(), ref, **TOL)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, saliency, g)
    (ref_grad,) = torch.autograd.grad(ref, saliency, g.double())
    torch.testing.assert_close(grad.double(), ref_grad.double(), **GRAD_TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_large_map_accuracy(device):
    """SPEC §1.3: relative error <= 1e-4 for non-negative maps up to 4096 x 4096, small boxes far from
    the origin included (the look-ups there subtract large table entries)."""
    H = W = 4096
    saliency = (torch.rand(1, H, W, device=device) ** 4) * 1000.0
    boxes = torch.tensor(
        [[[0, 0, H, W], [H - 1, W - 1, 1, 1], [4000, 3000, 3, 2], [2048, 17, 1, 4079], [5, 4090, 4091, 6],
          [1000, 1000, 2000, 2500]]],
        device=device,
    )
    out = ops.crop_saliency(saliency, boxes)
    torch.testing.assert_close(out.double(), reference_crop_saliency(saliency, boxes), **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    s = torch.rand(2, 4, 5, device=device)
    assert ops.crop_saliency(s, torch.zeros(2, 0, 4, dtype=torch.int64, device=device)).shape == (2, 0)
    assert ops.crop_saliency(s[:0], torch.zeros(0, 3, 4, dtype=torch.int64, device=device)).shape == (0, 3)
    # No boxes: the gradient is all zeros.
    s.requires_grad_()
    ops.crop_saliency(s, torch.zeros(2, 0, 4, dtype=torch.int64, device=device)).sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("box_dtype", BOX_DTYPES)
def test_gradient_matches_reference_autograd(device, box_dtype):
    for saliency, boxes in sample_inputs(device, box_dtype, requires_grad=True):
        # A non-contiguous upstream gradient (a transposed view).
        g = torch.randn(boxes.shape[1], boxes.shape[0], device=device).t()
        (grad,) = torch.autograd.grad(ops.crop_saliency(saliency, boxes), saliency, g)
        ref_input = saliency.detach().double().requires_grad_()
        (ref,) = torch.autograd.grad(reference_crop_saliency(ref_input, boxes), ref_input, g.double())
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad.double(), ref, **GRAD_TOL)


def test_double_backward_is_the_forward():
    """The backward is linear in grad; its own gradient with respect to grad is the box mean again."""
    saliency, boxes = sample_inputs("cpu", requires_grad=True)[0]
    g = torch.randn(boxes.shape[:2], requires_grad=True)
    (grad,) = torch.autograd.grad(ops.crop_saliency(saliency, boxes), saliency, g, create_graph=True)
    v = torch.randn_like(saliency)
    (gg,) = torch.autograd.grad((grad * v).sum(), g)
    torch.testing.assert_close(gg.double(), reference_crop_saliency(v, boxes), **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for saliency, boxes in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(torch.ops.lmcl.crop_saliency.default, (saliency, boxes))
        g = torch.randn(boxes.shape[:2], device=device, requires_grad=True)
        H, W = saliency.shape[1:]
        torch.library.opcheck(torch.ops.lmcl._crop_saliency_backward.default, (g, boxes, H, W))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    saliency, boxes = sample_inputs("cpu")[0]

    def fn(s, b):
        return ops.crop_saliency(s, b) * 2.0

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    torch.testing.assert_close(compiled(saliency, boxes), fn(saliency, boxes), rtol=0.0, atol=0.0)
    # Backward through the compiled graph.
    s1 = saliency.clone().requires_grad_()
    s2 = saliency.clone().requires_grad_()
    compiled(s1, boxes).sum().backward()
    fn(s2, boxes).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0.0, atol=0.0)


def test_cpu_deterministic():
    saliency = torch.rand(8, 33, 47)
    boxes = random_boxes(8, 300, 33, 47)
    g = torch.randn(8, 300)
    runs = []
    for _ in range(2):
        s = saliency.clone().requires_grad_()
        out = ops.crop_saliency(s, boxes)
        out.backward(g)
        runs.append((out, s.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# --- bad input: one test per check -------------------------------------------------------------------

def _good():
    return torch.rand(2, 6, 8), random_boxes(2, 3, 6, 8)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda s, b: (s.double(), b), TypeError, "saliency must be float32"),
        (lambda s, b: (s[0], b), RuntimeError, "saliency must have shape"),
        (lambda s, b: (s, b.float()), TypeError, "boxes must be int32 or int64"),
        (lambda s, b: (s, b[..., :3]), RuntimeError, r"boxes must have shape \[B, N, 4\]"),
        (lambda s, b: (s, b[0]), RuntimeError, r"boxes must have shape \[B, N, 4\]"),
        (lambda s, b: (s, b[:1]), RuntimeError, "boxes must have the batch size"),
    ],
)
def test_bad_metadata(make, exc, match):
    with pytest.raises(exc, match=match):
        ops.crop_saliency(*make(*_good()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bad_device_mix():
    s, b = _good()
    with pytest.raises(RuntimeError, match="boxes must be on the device of saliency"):
        ops.crop_saliency(s.cuda(), b)


BAD_BOXES = [
    (1, (-1, 0, 2, 2)),   # top < 0
    (0, (0, -1, 2, 2)),   # left < 0
    (1, (5, 0, 2, 2)),    # top + height > H
    (0, (0, 7, 1, 2)),    # left + width > W
    (1, (0, 0, 0, 3)),    # height < 1
    (0, (0, 0, 3, 0)),    # width < 1
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b, box", BAD_BOXES)
def test_bad_box_values(device, b, box):
    s, boxes = _good()
    boxes[b, 1] = torch.tensor(box)
    with pytest.raises(ValueError, match=rf"boxes must lie inside the 6x8 image .* boxes\[{b}, 1\]"):
        ops.crop_saliency(s.to(device), boxes.to(device))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda g, b: (g.double(), b, 6, 8), TypeError, "grad must be float32"),
        (lambda g, b: (g[:, :2], b, 6, 8), RuntimeError, r"grad must have shape \[B, N\]"),
        (lambda g, b: (g, b.float(), 6, 8), TypeError, "boxes must be int32 or int64"),
        (lambda g, b: (g, b[..., :2], 6, 8), RuntimeError, r"boxes must have shape \[B, N, 4\]"),
        (lambda g, b: (g, b, -1, 8), RuntimeError, "H and W must be >= 0"),
    ],
)
def test_backward_bad_metadata(make, exc, match):
    _, boxes = _good()
    with pytest.raises(exc, match=match):
        torch.ops.lmcl._crop_saliency_backward(*make(torch.randn(2, 3), boxes))


# --- the CUDA launcher's grid, run on the CPU ----------------------------------------------------------

GRID_SHAPES = [dict(threads=256, max_blocks=4096), dict(threads=3, max_blocks=2), dict(threads=1, max_blocks=1)]


@pytest.mark.parametrize("grid", GRID_SHAPES, ids=lambda g: f"t{g['threads']}-b{g['max_blocks']}")
@pytest.mark.parametrize("box_dtype", BOX_DTYPES)
def test_grid_runner_matches_cpu(grid_runner, grid, box_dtype):
    for saliency, boxes in sample_inputs("cpu", box_dtype):
        out, invalid = grid_runner.crop_saliency(saliency, boxes, grid["threads"], grid["max_blocks"], True)
        torch.testing.assert_close(out, ops.crop_saliency(saliency, boxes), **TOL)
        assert not invalid.any()
        g = torch.randn(boxes.shape[:2])
        H, W = saliency.shape[1:]
        grad = grid_runner.crop_saliency_backward(g, boxes, H, W, grid["threads"], grid["max_blocks"])
        torch.testing.assert_close(grad, torch.ops.lmcl._crop_saliency_backward(g, boxes, H, W), **GRAD_TOL)


def test_grid_runner_empty(grid_runner):
    s = torch.rand(2, 4, 5)
    out, _ = grid_runner.crop_saliency(s, torch.zeros(2, 0, 4, dtype=torch.int64), 4, 2, True)
    assert out.shape == (2, 0)
    no_boxes = torch.zeros(2, 0, 4, dtype=torch.int64)
    grad = grid_runner.crop_saliency_backward(torch.zeros(2, 0), no_boxes, 4, 5, 4, 2)
    assert torch.equal(grad, torch.zeros(2, 4, 5))
    no_images = torch.zeros(0, 3, 4, dtype=torch.int64)
    assert grid_runner.crop_saliency_backward(torch.zeros(0, 3), no_images, 4, 5, 4, 2).shape == (0, 4, 5)


@pytest.mark.parametrize("b, box", BAD_BOXES)
def test_grid_runner_box_check_and_clamp(grid_runner, b, box):
    """The CUDA op's check (in the look-up kernel: a device-side assert on the GPU, a ValueError on the
    grid runner) has the CPU op's message; without the check, the kernels clamp: the flagged box reads the mean of its part inside the image (0 if
    none) and the other boxes are untouched."""
    s, boxes = _good()
    boxes[b, 1] = torch.tensor(box)
    with pytest.raises(ValueError, match=rf"boxes must lie inside the 6x8 image .* boxes\[{b}, 1\]"):
        grid_runner.crop_saliency(s, boxes, 2, 2, True)
    out, invalid = grid_runner.crop_saliency(s, boxes, 2, 2, False)
    expected_invalid = torch.zeros(2, 3, dtype=torch.uint8)
    expected_invalid[b, 1] = 1
    assert torch.equal(invalid, expected_invalid)
    t, l, h, w = box
    t0, l0 = min(max(t, 0), 6), min(max(l, 0), 8)
    t1, l1 = t0 + min(max(h, 0), 6 - t0), l0 + min(max(w, 0), 8 - l0)
    inside = s[b, t0:t1, l0:l1].double()
    assert out[b, 1].item() == pytest.approx(inside.mean().item() if inside.numel() else 0.0, rel=TOL["rtol"])
    valid = invalid == 0
    torch.testing.assert_close(out[valid].double(), reference_crop_saliency(s, boxes.clamp_min(0))[valid], **TOL)
    grad = grid_runner.crop_saliency_backward(torch.ones(2, 3), boxes, 6, 8, 2, 2)
    assert torch.isfinite(grad).all()


def non_finite_samples(box_dtype=torch.int64, device="cpu"):
    """(saliency, boxes) pairs of 7 x 8 maps with NaN, +Inf and -Inf pixels, alone and mixed, at image corners
    and edges, and boxes around pixel (2, 3) (non-finite in most maps): the pixel alone, boxes with it at each
    corner, strips through it, boxes sharing its rows or columns without it, boxes above-left and below-right
    of it; then the image's corners and borders (edge_boxes) and random boxes. Contiguous and transposed maps."""
    H, W, nan, inf = 7, 8, math.nan, math.inf
    placements = [
        {(2, 3): nan},
        {(0, 0): inf},
        {(6, 7): -inf, (2, 3): inf},
        {(2, 3): inf, (4, 5): -inf},
        {(3, 0): nan, (3, 7): inf, (0, 4): -inf},
        {(1, 1): inf, (5, 6): inf, (6, 0): nan, (2, 3): -inf},
        {(2, 3): nan, (2, 4): inf, (3, 3): -inf},
    ]
    B = len(placements)
    saliency = torch.rand(B, H, W, generator=torch.Generator().manual_seed(0))
    for b, pixels in enumerate(placements):
        for (i, j), value in pixels.items():
            saliency[b, i, j] = value
    around = [(2, 3, 1, 1), (2, 3, 3, 3), (0, 0, 3, 4), (0, 3, 3, 5), (2, 0, 3, 4), (2, 0, 1, W), (0, 3, H, 1),
              (2, 4, 2, 4), (3, 3, 4, 2), (3, 4, 4, 4), (0, 0, 2, 3), (0, 0, H, W)]
    boxes = torch.cat([torch.tensor([around] * B), edge_boxes(B, H, W), random_boxes(B, 20, H, W)], dim=1)
    boxes = boxes.to(device=device, dtype=box_dtype)
    saliency = saliency.to(device)
    return [(saliency, boxes), (saliency.transpose(1, 2).contiguous().transpose(1, 2), boxes)]


def assert_same_box_means(out, expected):
    """NaN where `expected` is NaN, the same infinities, finite values within TOL."""
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.isinf(), expected.isinf()) and torch.equal(out[out.isinf()], expected[expected.isinf()])
    torch.testing.assert_close(out, expected, equal_nan=True, **TOL)


@pytest.mark.parametrize("grid", GRID_SHAPES[:2], ids=lambda g: f"t{g['threads']}-b{g['max_blocks']}")
@pytest.mark.parametrize("wide_counts", [False, True], ids=["int32-counts", "int64-counts"])
def test_grid_runner_non_finite_pixels_reach_only_their_boxes(grid_runner, grid, wide_counts):
    """The CUDA op's tables (the finite pixels in float64, the NaN/+Inf/-Inf counts) give the CPU op's means: a
    box is NaN/Inf exactly when it holds a NaN/Inf pixel, and the boxes below and right of one stay finite."""
    for saliency, boxes in non_finite_samples():
        out, _ = grid_runner.crop_saliency(saliency, boxes, grid["threads"], grid["max_blocks"], True, wide_counts)
        assert_same_box_means(out, ops.crop_saliency(saliency, boxes))
        assert_same_box_means(out, reference_crop_saliency(saliency, boxes).float())  # the plain slice means
        clean = reference_crop_saliency((~saliency.isfinite()).float(), boxes) == 0
        assert clean.any() and (~clean).any()
        assert out[clean].isfinite().all()
        assert out[0, 9].isfinite() and out[0, 0].isnan()  # below-right of map 0's NaN / the NaN itself


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for saliency, boxes in sample_inputs("cpu", requires_grad=True):
        g = torch.randn(boxes.shape[:2])
        sc = saliency.detach().cuda().requires_grad_()
        out_cuda = ops.crop_saliency(sc, boxes.cuda())
        out_cuda.backward(g.cuda())
        out_cpu = ops.crop_saliency(saliency, boxes)
        out_cpu.backward(g)
        torch.testing.assert_close(out_cuda.cpu(), out_cpu, **TOL)
        torch.testing.assert_close(sc.grad.cpu(), saliency.grad, **GRAD_TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backward_deterministic_mode():
    # The CUDA backward accumulates box corners with index_put_(accumulate=True), which takes its
    # deterministic (sorting) path under torch.use_deterministic_algorithms: two runs are bit-equal.
    saliency, boxes = sample_inputs("cuda")[0]
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            s = saliency.detach().clone().requires_grad_(True)
            ops.crop_saliency(s, boxes).sum().backward()
            grads.append(s.grad)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_non_finite_pixels_match_cpu():
    for saliency, boxes in non_finite_samples(device="cuda"):
        assert_same_box_means(ops.crop_saliency(saliency, boxes).cpu(), ops.crop_saliency(saliency.cpu(), boxes.cpu()))
