"""Hypothesis fuzzing of every op (issue 15): random shapes (0-size, 1 pixel), dtypes, strides, hostile values
(NaN, Inf, huge, denormal), boxes on and past every edge (int32 overflow), sizes, mean/std, tau, weights, anchor
indices and `group` misuse, eager and under torch.compile. Each case either matches the slow reference or raises
the documented exception type with a message naming the argument.

Budget: a fixed, derandomised set of examples in CI; LMCL_FUZZ_EXAMPLES=N runs N random examples per test.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lmcl_fast.ops import crop_saliency, lmc_loss, multi_crop, sample_boxes, select_anchor, spectral_residual
from lmcl_testing import MULTI_CROP_LOWP_ULPS, TOLERANCES, ulp
from test_crop_saliency import reference_crop_saliency
from test_lmc_loss import reference_lmc_loss
from test_multi_crop import reference_multi_crop
from test_spectral_residual import reference_spectral_residual

FUZZ_EXAMPLES = int(os.environ.get("LMCL_FUZZ_EXAMPLES", "0"))


def fuzz_settings(ci_examples: int):
    """CI: `ci_examples` derandomised examples (the same every run); LMCL_FUZZ_EXAMPLES=N: N random ones."""
    return settings(max_examples=FUZZ_EXAMPLES or ci_examples, derandomize=not FUZZ_EXAMPLES, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck), print_blob=True)


def expect_error(fn, errors):
    """fn() must raise one of `errors`, a list of (documented exception type, argument its message names): a
    case with several bad arguments may report any of them. Under torch.compile an error the fake kernel raises
    while tracing comes as torch._dynamo's TorchRuntimeError quoting it (`got ValueError('multi_crop: ...')`)."""
    from torch._dynamo.exc import TorchRuntimeError

    with pytest.raises(tuple({exc for exc, _ in errors} | {TorchRuntimeError})) as info:
        fn()
    text = str(info.value)
    if isinstance(info.value, TorchRuntimeError):
        assert any(f"{exc.__name__}(" in text and name in text for exc, name in errors), (
            f"expected one of {errors} quoted, got {text}")
        return
    assert any(isinstance(info.value, exc) and name in text for exc, name in errors), (
        f"expected one of {errors}, got {type(info.value).__name__}: {text}")


# ---------------------------------------------------------------------------------------- hostile values
HOSTILE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e30, "-huge": -1e30, "denormal": 1e-40,
            "max": 3.0e38}


@st.composite
def float_values(draw, shape, hostile: bool = True):
    """float32 values of `shape`: random normals, with a few hostile values sprinkled in when asked."""
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if hostile and x.numel() and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            x.view(-1)[draw(st.integers(0, x.numel() - 1))] = HOSTILE[draw(st.sampled_from(sorted(HOSTILE)))]
    return x


@st.composite
def strided(draw, x: torch.Tensor, channel_dim=None):
    """The same values as `x` in a random layout: contiguous, transposed (last two dims' memory swapped),
    sliced out of a larger buffer at an offset, channels-last, or expanded from a size-1 batch."""
    layout = draw(st.sampled_from(["contiguous", "transposed", "offset-slice", "channels-last", "expanded"]))
    if layout == "transposed" and x.dim() >= 2:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "offset-slice":
        big = torch.full([2 * s + 3 for s in x.shape], 7.0).to(x.dtype)
        view = big[tuple(slice(3, 3 + 2 * s, 2) for s in x.shape)]
        view.copy_(x)
        return view
    if layout == "channels-last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "expanded" and x.dim() >= 1 and x.shape[0] > 0:
        return x[:1].expand(x.shape)  # every batch row aliases the first (stride 0)
    return x


# ---------------------------------------------------------------------------------------- boxes
INT32_MAX = 2**31 - 1


@st.composite
def box_row(draw, H: int, W: int):
    """(top, left, height, width): inside, on an edge, outside by one, negative, zero-size or int32-overflowing."""
    kind = draw(st.sampled_from(["inside", "inside", "inside", "edge", "full", "outside-by-one", "negative",
                                 "empty", "overflow"]))
    if kind in ("inside", "edge", "full") and H >= 1 and W >= 1:
        h, w = draw(st.integers(1, H)), draw(st.integers(1, W))
        if kind == "full":
            return [0, 0, H, W]
        if kind == "edge":
            return draw(st.sampled_from([[0, 0, h, w], [H - h, W - w, h, w], [0, W - w, h, w], [H - h, 0, h, w]]))
        return [draw(st.integers(0, H - h)), draw(st.integers(0, W - w)), h, w]
    if kind == "outside-by-one":
        h, w = draw(st.integers(1, H + 1)), draw(st.integers(1, W + 1))
        return draw(st.sampled_from([[H - h + 1, 0, h, w], [0, W - w + 1, h, w]]))
    if kind == "negative":
        return draw(st.sampled_from([[-1, 0, 1, 1], [0, -1, 1, 1], [0, 0, -1, 1], [0, 0, 1, -2]]))
    if kind == "empty":
        return draw(st.sampled_from([[0, 0, 0, 1], [0, 0, 1, 0]]))
    return draw(st.sampled_from([[INT32_MAX, 0, 2, 1], [0, INT32_MAX, 1, 2], [1, 0, INT32_MAX, 1],
                                 [0, 0, 1, 2**40], [-(2**40), 0, 1, 1], [2**62, 2**62, 2**62, 2**62]]))


def box_inside(row, H, W) -> bool:
    t, l, h, w = row
    return t >= 0 and l >= 0 and h >= 1 and w >= 1 and t + h <= H and l + w <= W


@st.composite
def boxes_for(draw, B: int, N: int, H: int, W: int):
    """int32/int64 boxes [B, N, 4] in a random layout, and whether every box is valid (and fits the dtype)."""
    rows = [[draw(box_row(H, W)) for _ in range(N)] for _ in range(B)]
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    fits = all(abs(v) <= INT32_MAX for r in rows for box in r for v in box) or dtype == torch.int64
    assume(fits)  # values beyond int32 cannot be stored in an int32 tensor at all
    boxes = torch.tensor(rows, dtype=dtype).reshape(B, N, 4)
    valid = all(box_inside(box, H, W) for r in rows for box in r)
    layout = draw(st.sampled_from(["contiguous", "transposed", "offset-slice"]))
    if layout == "transposed":
        boxes = boxes.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    elif layout == "offset-slice":
        big = torch.zeros((B, N + 1, 9), dtype=dtype)
        big[:, 1:, 2:6] = boxes
        boxes = big[:, 1:, 2:6]
    return boxes, valid


# ---------------------------------------------------------------------------------------- multi_crop
@st.composite
def image_batch(draw, B, C, H, W):
    """uint8 [B, H, W, C] or float32 [B, C, H, W] (hostile values allowed) in a random layout."""
    if draw(st.sampled_from(["uint8", "float32"])) == "uint8":
        seed = draw(st.integers(0, 2**31 - 1))
        images = torch.randint(0, 256, (B, H, W, C), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    else:
        images = draw(float_values((B, C, H, W)))
    return draw(strided(images))


@st.composite
def multi_crop_case(draw):
    B, N, C = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.sampled_from([1, 3]))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    images = draw(image_batch(B, C, H, W))
    boxes, boxes_ok = draw(boxes_for(B, N, H, W))
    size = draw(st.one_of(st.integers(-1, 7), st.tuples(st.integers(0, 7), st.integers(1, 7))))
    channel = st.one_of(st.floats(-1, 1), st.sampled_from([0.0, math.nan, math.inf, -0.5, 1e-30]))
    mean = draw(st.none() | st.lists(channel, min_size=C, max_size=C) | st.lists(channel, min_size=1, max_size=4))
    std = draw(st.none() | st.lists(channel, min_size=C, max_size=C) | st.lists(channel, min_size=1, max_size=4))
    flip = draw(st.none() | st.just("random"))
    if flip is not None:
        flip = torch.rand(N, B).T < 0.5  # a transposed view
    out_dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return dict(images=images, boxes=boxes, size=size, mean=mean, std=std, flip=flip, out_dtype=out_dtype), boxes_ok


def multi_crop_errors(case, boxes_ok):
    """[(exception type, argument name)] the documented checks raise for this case ([] when it is valid)."""
    images, size, mean, std = case["images"], case["size"], case["mean"], case["std"]
    C = images.shape[3] if images.dtype == torch.uint8 else images.shape[1]
    sizes = [size, size] if isinstance(size, int) else list(size)
    errors = []
    if min(sizes) < 1:
        errors.append((ValueError, "size"))
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and (len(values) != C or not all(math.isfinite(v) for v in values)):
            errors.append((ValueError, name))
    if std is not None and any(v == 0 for v in std):
        errors.append((ValueError, "std"))
    if not boxes_ok:
        errors.append((ValueError, "boxes"))
    return errors


def assert_multi_crop_close(out, ref, std):
    """SPEC §1.1 bound where the reference is finite, widened by float32 rounding of huge inputs; where the
    rounded reference is infinite or NaN the output must be too (no finite garbage, no silent NaN)."""
    rounded = ref.to(out.dtype).double()
    C = ref.shape[2]
    std_t = torch.tensor(std if std is not None else [1.0] * C, dtype=torch.float64).abs().view(C, 1, 1)
    finite = rounded.isfinite()
    o = out.double()
    bound = 1e-5 / std_t + 4 * torch.finfo(torch.float32).eps * ref.abs()
    if out.dtype != torch.float32:
        bound = bound + MULTI_CROP_LOWP_ULPS * ulp(rounded.to(out.dtype))
    err = (o - (ref if out.dtype == torch.float32 else rounded)).abs()
    bad = finite & ~(err <= bound)
    assert not bad.any(), f"{int(bad.sum())} values off; max error {float(err[bad].max()):.3g}"
    nonfinite = ~finite
    assert bool((o[nonfinite].isnan() | (o[nonfinite] == rounded[nonfinite])).all()), "finite value where the " \
        "reference is infinite or NaN"


def check_multi_crop(case, boxes_ok, fn=multi_crop):
    errors = multi_crop_errors(case, boxes_ok)
    if errors:
        expect_error(lambda: fn(**case), errors)
        return
    out = fn(**case)
    ref = reference_multi_crop(case["images"], case["boxes"], case["size"], case["mean"], case["std"], case["flip"])
    assert out.shape == ref.shape and out.dtype == case["out_dtype"] and out.is_contiguous()
    assert_multi_crop_close(out, ref, case["std"])


@fuzz_settings(60)
@given(multi_crop_case())
def test_multi_crop_fuzz(args):
    check_multi_crop(*args)


@st.composite
def multi_crop_grad_case(draw):
    """Valid float32 cases with a random output gradient: the backward is linear in the gradient, so hostile
    image values do not enter it (and must not poison it)."""
    B, N, C = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.sampled_from([1, 3]))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    images = draw(strided(draw(float_values((B, C, H, W)))))
    rows = [[draw(box_row(H, W).filter(lambda r: box_inside(r, H, W))) for _ in range(N)] for _ in range(B)]
    boxes = torch.tensor(rows, dtype=torch.int64).reshape(B, N, 4)
    size = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    std = draw(st.none() | st.lists(st.floats(0.1, 2.0) | st.floats(-2.0, -0.1), min_size=C, max_size=C))
    flip = torch.rand(B, N) < 0.5 if draw(st.booleans()) else None
    grad = draw(float_values((B, N, C, *size), hostile=False))
    return images, boxes, size, std, flip, grad


@fuzz_settings(30)
@given(multi_crop_grad_case())
def test_multi_crop_backward_fuzz(args):
    images, boxes, size, std, flip, grad = args
    x = images.detach().clone().requires_grad_()
    # autograd.grad, not .backward(): AccumulateGrad would give x.grad the strides of x.
    (g,) = torch.autograd.grad(multi_crop(x, boxes, size, std=std, flip=flip), x, grad)
    assert g.shape == images.shape and g.is_contiguous()
    if grad.numel() == 0:
        assert not g.any()
        return
    x64 = images.detach().double().nan_to_num(0.0, 0.0, 0.0).requires_grad_()  # the gradient ignores values
    reference_multi_crop(x64, boxes, size, std=std, flip=flip).backward(grad.double())
    torch.testing.assert_close(g.double(), x64.grad, **TOLERANCES[("multi_crop backward", torch.float32)])


# ---------------------------------------------------------------------------------------- sample_boxes
@st.composite
def sample_boxes_case(draw):
    B = draw(st.integers(0, 4))
    side = st.one_of(st.integers(1, 300), st.sampled_from([0, -1, 2**31, 2**40]))
    heights, widths = draw(st.lists(side, min_size=B, max_size=B)), draw(st.lists(side, min_size=B, max_size=B))
    if draw(st.booleans()):
        heights = torch.tensor(heights, dtype=torch.int64)
    n = draw(st.one_of(st.integers(0, 5), st.sampled_from([-1, 2.0, True])))
    scale = st.one_of(st.floats(0.01, 1.0), st.sampled_from([0.0, -0.5, 1.5, math.nan, math.inf]))
    scales = draw(st.tuples(scale, scale))
    min_size = draw(st.one_of(st.integers(1, 64), st.sampled_from([0, -3, 4.0, True])))
    return dict(heights=heights, widths=widths, n=n, scales=scales, min_size=min_size)


def sample_boxes_errors(case):
    h, w = [int(v) for v in case["heights"]], case["widths"]
    n, min_size, (low, high) = case["n"], case["min_size"], case["scales"]
    errors = []
    if len(h) and min(min(h), min(w)) < 1:
        errors.append((ValueError, "heights and widths"))
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        errors.append((ValueError, "n"))
    if not 0 < low <= high <= 1:
        errors.append((ValueError, "scales"))
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        errors.append((ValueError, "min_size"))
    return errors


@fuzz_settings(60)
@given(sample_boxes_case(), st.integers(0, 2**31 - 1))
def test_sample_boxes_fuzz(case, seed):
    errors = sample_boxes_errors(case)
    g = torch.Generator().manual_seed(seed)
    if errors:
        expect_error(lambda: sample_boxes(**case, generator=g), errors)
        return
    boxes = sample_boxes(**case, generator=g)
    h, w = [int(v) for v in case["heights"]], case["widths"]
    assert boxes.shape == (len(h), case["n"], 4) and boxes.dtype == torch.int64
    for b, (hb, wb) in enumerate(zip(h, w)):
        t, l, bh, bw = boxes[b].unbind(-1)
        short = min(hb, wb)
        assert bool((bh == bw).all()) and bool((bh >= min(case["min_size"], short)).all())
        assert bool((bh <= short).all()) and bool((t >= 0).all()) and bool((l >= 0).all())
        assert bool((t + bh <= hb).all()) and bool((l + bw <= wb).all()), "box outside the image"


# ---------------------------------------------------------------------------------------- crop_saliency
@st.composite
def crop_saliency_case(draw):
    B, N = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    saliency = draw(strided(draw(float_values((B, H, W)))))
    boxes, ok = draw(boxes_for(B, N, H, W))
    return saliency, boxes, ok


def assert_box_means_close(out, ref, saliency):
    """SPEC §1.3 (relative 1e-4) plus the float64 summed-area table's own rounding, which scales with the
    magnitude of the whole map; non-finite reference values must come back as the same non-finite value."""
    finite = ref.isfinite()
    scale = saliency.double().nan_to_num(0.0, 0.0, 0.0).abs().sum() if saliency.numel() else 0.0
    bound = TOLERANCES[("crop_saliency", torch.float32)]["rtol"] * ref.abs() + 2**-45 * scale
    bound = bound + torch.finfo(torch.float32).tiny
    o = out.double()
    assert bool(((o - ref).abs() <= bound)[finite].all()), f"max error {float((o - ref).abs()[finite].max()):.3g}"
    same = (o == ref) | (o.isnan() & ref.isnan())
    assert bool(same[~finite].all()), f"got {o[~finite].tolist()} where the reference is {ref[~finite].tolist()}"


@fuzz_settings(60)
@given(crop_saliency_case())
def test_crop_saliency_fuzz(args):
    saliency, boxes, ok = args
    if not ok:
        expect_error(lambda: crop_saliency(saliency, boxes), [(ValueError, "boxes")])
        return
    out = crop_saliency(saliency, boxes)
    assert out.shape == boxes.shape[:2] and out.dtype == torch.float32
    assert_box_means_close(out, reference_crop_saliency(saliency, boxes), saliency)


@fuzz_settings(30)
@given(crop_saliency_case().filter(lambda c: c[2]), st.integers(0, 2**31 - 1))
def test_crop_saliency_backward_fuzz(args, seed):
    saliency, boxes, _ = args
    x = saliency.detach().clone().requires_grad_()
    grad = torch.randn(boxes.shape[:2], generator=torch.Generator().manual_seed(seed))
    crop_saliency(x, boxes).backward(grad)
    if grad.numel() == 0:
        assert x.grad.shape == saliency.shape and not x.grad.any()
        return
    x64 = saliency.detach().double().nan_to_num(0.0, 0.0, 0.0).requires_grad_()
    reference_crop_saliency(x64, boxes).backward(grad.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, **TOLERANCES[("crop_saliency_backward", torch.float32)])


# ---------------------------------------------------------------------------------------- spectral_residual
@st.composite
def spectral_residual_case(draw):
    B, C = draw(st.integers(0, 2)), draw(st.sampled_from([1, 3]))
    H, W = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    images = draw(image_batch(B, C, H, W))
    long_side = draw(st.one_of(st.integers(1, 70), st.sampled_from([0, -4])))
    sigma = draw(st.one_of(st.floats(0.3, 4.0), st.sampled_from([0.0, -1.0, math.nan, math.inf])))
    return images, long_side, sigma


@fuzz_settings(40)
@given(spectral_residual_case())
def test_spectral_residual_fuzz(args):
    images, long_side, sigma = args
    errors = [(ValueError, "long_side")] if long_side < 1 else []
    errors += [] if math.isfinite(sigma) and sigma > 0 else [(ValueError, "sigma")]
    if errors:
        expect_error(lambda: spectral_residual(images, long_side, sigma), errors)
        return
    out = spectral_residual(images, long_side, sigma)
    B, H, W = out.shape
    assert (B, H, W) == (images.shape[0], *(images.shape[1:3] if images.dtype == torch.uint8 else images.shape[2:]))
    if B == 0:
        return
    ref = reference_spectral_residual(images, long_side, sigma)
    tol = TOLERANCES[("spectral_residual", torch.float32)]
    for b in range(B):
        if images.dtype != torch.uint8 and not images[b].isfinite().all():
            # a NaN or Inf pixel spreads through the FFT: the whole map says so, never finite garbage
            assert bool(out[b].isnan().all()), "a non-finite input must give a NaN map"
        elif ref[b].isfinite().all():
            torch.testing.assert_close(out[b].double(), ref[b], **tol)
        else:  # the reference's map has no contrast (0 / 0): documented as all zeros
            assert not out[b].any()


# ---------------------------------------------------------------------------------------- select_anchor
@st.composite
def select_anchor_case(draw):
    B, N = draw(st.integers(0, 4)), draw(st.integers(0, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64]))
    x = draw(float_values((B, N)))
    if draw(st.booleans()):  # ties
        x = x.round()
    return draw(strided(x.to(dtype) if dtype != torch.int64 else x.nan_to_num(0.0, 0.0, 0.0).clamp(-9, 9).long()))


@fuzz_settings(60)
@given(select_anchor_case())
def test_select_anchor_fuzz(scores):
    if not scores.dtype.is_floating_point:
        expect_error(lambda: select_anchor(scores), [(TypeError, "scores")])
        return
    if scores.shape[1] == 0:
        expect_error(lambda: select_anchor(scores), [(RuntimeError, "scores")])
        return
    if scores.isnan().any():
        expect_error(lambda: select_anchor(scores), [(ValueError, "scores")])
        return
    s = scores.double()
    expected = [int((row == row.max()).nonzero()[0]) for row in s]
    assert select_anchor(scores).tolist() == expected


# ---------------------------------------------------------------------------------------- lmc_loss
@st.composite
def lmc_loss_case(draw):
    B, N, D = draw(st.integers(0, 4)), draw(st.integers(0, 4)), draw(st.integers(0, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    z = draw(strided(draw(float_values((B, N, D))).to(dtype)))
    teacher = draw(st.none() | st.just("t"))
    if teacher is not None:
        teacher = draw(strided(draw(float_values((B, N, D))).to(dtype)))
        if draw(st.integers(0, 9)) == 0:
            teacher = teacher.to(torch.float32 if dtype != torch.float32 else torch.float16)
    anchor = draw(st.lists(st.integers(0, max(N - 1, 0)) | st.sampled_from([-1, N, 2**40]), min_size=B, max_size=B))
    anchor_idx = torch.tensor(anchor, dtype=torch.int64)
    if draw(st.integers(0, 9)) == 0:
        anchor_idx = anchor_idx.int()
    tau = draw(st.floats(0.01, 2.0) | st.sampled_from([0.0, -0.1, math.nan, math.inf]))
    intra = draw(st.floats(0.0, 2.0) | st.sampled_from([-0.5, math.nan, math.inf]))
    manifold = draw(st.floats(-1.0, 2.0) | st.sampled_from([math.nan, -math.inf]))
    return dict(z=z, anchor_idx=anchor_idx, teacher=teacher, tau=tau, intra_weight=intra, manifold_weight=manifold)


def lmc_loss_errors(case):
    z, teacher, anchor_idx = case["z"], case["teacher"], case["anchor_idx"]
    B, N, _ = z.shape
    tau, intra, manifold = case["tau"], case["intra_weight"], case["manifold_weight"]
    errors = []
    if teacher is not None and teacher.dtype != z.dtype:
        errors.append((TypeError, "teacher"))
    if B < 2:
        errors.append((ValueError, "B >= 2"))
    if N < 2:
        errors.append((ValueError, "N >= 2"))
    if anchor_idx.dtype != torch.int64:
        errors.append((TypeError, "anchor_idx"))
    if not (math.isfinite(tau) and tau > 0):
        errors.append((ValueError, "tau"))
    if not (math.isfinite(intra) and intra >= 0):
        errors.append((ValueError, "intra_weight"))
    if not math.isfinite(manifold):
        errors.append((ValueError, "manifold_weight"))
    if bool(((anchor_idx < 0) | (anchor_idx >= N)).any()):
        errors.append((ValueError, "anchor_idx"))
    return errors


def reference_or_error(case):
    args = {k: v for k, v in case.items()}
    return reference_lmc_loss(args.pop("z"), args.pop("anchor_idx"), **args)


def check_lmc_loss(case, fn=lmc_loss, backward=True):
    errors = lmc_loss_errors(case)
    if errors:
        expect_error(lambda: fn(**case), errors)
        return
    leaves = {k: case[k].detach().clone().requires_grad_() for k in ("z", "teacher") if case[k] is not None}
    loss = fn(**{**case, **leaves})
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    ref = reference_or_error({**case, **ref_leaves})
    expected_dtype = torch.float64 if case["z"].dtype == torch.float64 else torch.float32
    assert loss.dtype == expected_dtype and loss.shape == ()
    if not ref.isfinite():
        assert not loss.isfinite() or case["z"].dtype != torch.float64, f"finite {loss} where the reference is {ref}"
        return
    assert loss.isfinite(), f"{loss} where the reference is {float(ref)}"
    lowp = case["z"].dtype in (torch.float16, torch.bfloat16)
    rtol = 2e-2 if lowp else TOLERANCES[("lmc_loss", torch.float32)]["rtol"] * 10
    torch.testing.assert_close(loss.double(), ref, rtol=rtol, atol=rtol)
    if not backward:
        return
    loss.backward()
    ref.backward()
    for k, leaf in leaves.items():
        g, g_ref = leaf.grad.double(), ref_leaves[k].grad
        assert leaf.grad.dtype == leaf.dtype and g.isfinite().all() == g_ref.isfinite().all()
        if g_ref.isfinite().all():
            scale = float(g_ref.abs().max()) if g_ref.numel() else 0.0
            torch.testing.assert_close(g, g_ref, rtol=rtol * 10, atol=(1e-2 if lowp else 1e-4) * scale + 1e-7)


@fuzz_settings(80)
@given(lmc_loss_case())
def test_lmc_loss_fuzz(case):
    check_lmc_loss(case)


@pytest.mark.parametrize("group", ["world", 0, object()], ids=["string", "int", "object"])
def test_lmc_loss_group_that_is_not_a_process_group_raises(group):
    z, idx = torch.randn(2, 3, 4), torch.tensor([0, 1])
    expect_error(lambda: lmc_loss(z, idx, group=group), [(TypeError, "group")])


def test_lmc_loss_one_rank_group_equals_no_group(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        z, t, idx = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.tensor([0, 3, 1])
        torch.testing.assert_close(lmc_loss(z, idx, t, group=dist.group.WORLD), lmc_loss(z, idx, t))
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- torch.compile
# Compiling is slow (seconds per graph), so each op gets one compiled function (dynamic shapes), shared by a
# few examples; the eager fuzz above covers the breadth.
_COMPILED = {}
if FUZZ_EXAMPLES:  # float arguments (tau, weights) are specialised: every new value is one more compile
    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 2 * FUZZ_EXAMPLES + 256


def compiled(name, fn):
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=True)
    return _COMPILED[name]


@fuzz_settings(4)
@given(multi_crop_case())
def test_multi_crop_fuzz_compiled(args):
    case, ok = args
    case["out_dtype"] = torch.float32
    fn = compiled("multi_crop", lambda images, boxes, size, mean, std, flip, out_dtype:
                  multi_crop(images, boxes, size, mean, std, flip, out_dtype))
    check_multi_crop(case, ok, fn)


@fuzz_settings(4)
@given(crop_saliency_case())
def test_crop_saliency_fuzz_compiled(args):
    saliency, boxes, ok = args
    fn = compiled("crop_saliency", crop_saliency)
    if not ok:
        expect_error(lambda: fn(saliency, boxes), [(ValueError, "boxes")])
        return
    assert_box_means_close(fn(saliency, boxes), reference_crop_saliency(saliency, boxes), saliency)


@fuzz_settings(4)
@given(select_anchor_case().filter(lambda s: s.dtype == torch.float32 and s.shape[1] > 0))
def test_select_anchor_fuzz_compiled(scores):
    fn = compiled("select_anchor", select_anchor)
    if scores.isnan().any():
        expect_error(lambda: fn(scores), [(ValueError, "scores")])
        return
    assert fn(scores).tolist() == select_anchor(scores).tolist()


@fuzz_settings(4)
@given(lmc_loss_case().filter(lambda c: c["z"].dtype == torch.float32 and c["teacher"] is not None))
def test_lmc_loss_fuzz_compiled(case):
    fn = compiled("lmc_loss", lambda z, anchor_idx, teacher, tau, intra_weight, manifold_weight:
                  lmc_loss(z, anchor_idx, teacher, tau, intra_weight, manifold_weight))
    check_lmc_loss(case, fn)


@fuzz_settings(3)
@given(spectral_residual_case().filter(lambda c: c[1] >= 1 and math.isfinite(c[2]) and c[2] > 0))
def test_spectral_residual_fuzz_compiled(args):
    images, long_side, sigma = args
    fn = compiled("spectral_residual", spectral_residual)
    out, eager = fn(images, long_side, sigma), spectral_residual(images, long_side, sigma)
    torch.testing.assert_close(out, eager, atol=TOLERANCES[("spectral_residual", torch.float32)]["atol"], rtol=0,
                               equal_nan=True)


# ---------------------------------------------------------------------------------------- regressions
# Each case below is a failure the fuzzing found, kept as a fixed example (the bug it was in brackets).
@pytest.mark.parametrize("name,values", [("mean", (0.5, math.nan, 0.5)), ("std", (0.2, 0.2, math.inf)),
                                         ("std", (math.nan,) * 3)])
def test_regression_multi_crop_non_finite_mean_or_std_raises(name, values):
    # [accepted: every output value of that channel came back NaN, 0 or Inf]
    images, boxes = torch.zeros((2, 8, 8, 3), dtype=torch.uint8), torch.tensor([[[0, 0, 4, 4]]] * 2)
    expect_error(lambda: multi_crop(images, boxes, 4, **{name: values}), [(ValueError, name)])
    fake = torch.empty((2, 8, 8, 3), dtype=torch.uint8, device="meta")  # the fake kernel (torch.compile) agrees
    expect_error(lambda: multi_crop(fake, boxes.to("meta"), 4, **{name: values}), [(ValueError, name)])


def test_regression_spectral_residual_arguments_and_degenerate_images():
    # [sigma=inf raised OverflowError from math.ceil; an empty batch raised an MKL FFT error; a 1-pixel
    # downscale stretched float32 rounding noise to [0, 1]]
    images = torch.randint(0, 256, (1, 2, 9, 1), dtype=torch.uint8)
    expect_error(lambda: spectral_residual(images, 64, math.inf), [(ValueError, "sigma")])
    assert spectral_residual(torch.zeros((0, 5, 7, 3), dtype=torch.uint8)).shape == (0, 5, 7)
    assert not spectral_residual(images, long_side=1).any()
    nan_image = torch.rand(1, 3, 16, 16)
    nan_image[0, 1, 3, 4] = math.nan
    assert spectral_residual(nan_image).isnan().all()


@pytest.mark.parametrize("value", [3.0e38, 1e30, 2e19])
def test_regression_lmc_loss_rows_with_huge_entries(value):
    # [the squared norm overflowed float32: the row normalised to zeros and the loss was 3.93 for 7.00]
    z, t = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4, 5)
    z[0, 0] *= value
    z[1, 1, 1] = value
    idx = torch.tensor([0, 1, 2])
    check_lmc_loss(dict(z=z, anchor_idx=idx, teacher=t, tau=0.1, intra_weight=0.5, manifold_weight=1.0))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_regression_crop_saliency_non_finite_pixel_reaches_only_its_boxes(value):
    # [a NaN or Inf pixel made every box below and right of it NaN, and a box holding an Inf NaN instead of Inf]
    saliency = torch.rand(2, 6, 7)
    saliency[0, 1, 1] = value
    saliency[1, 4, 2] = -value if value == value else value
    boxes = torch.tensor([[[3, 3, 2, 2], [0, 0, 2, 2], [0, 3, 3, 3], [1, 1, 5, 6]],
                          [[0, 0, 6, 7], [4, 2, 1, 1], [0, 3, 6, 4], [5, 0, 1, 7]]])
    out = crop_saliency(saliency, boxes)
    assert_box_means_close(out, reference_crop_saliency(saliency, boxes), saliency)
    both = saliency.clone()
    both[0, 2, 2] = -math.inf if value == math.inf else math.inf  # +Inf and -Inf in one box: NaN
    assert_box_means_close(crop_saliency(both, boxes), reference_crop_saliency(both, boxes), both)
