"""select_anchor (SPEC §1.3): argmax over crops, ties to the lowest index, NaN raises ValueError."""
import math

import pytest
import torch

from lmcl_fast import ops
from lmcl_testing import DEVICES

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def reference_select_anchor(scores: torch.Tensor) -> torch.Tensor:
    """SPEC §1.3 read literally, row by row in float64: the first index holding the row maximum."""
    s = scores.to(torch.float64)
    if torch.isnan(s).any():
        raise ValueError("NaN in scores")
    return torch.tensor([int((row == row.max()).nonzero()[0]) for row in s], dtype=torch.int64)


def sample_inputs(device, dtype):
    samples = [
        torch.randn(5, 7, device=device).to(dtype),
        torch.randn(1, 1, device=device).to(dtype),
        torch.randn(3, 300, device=device).to(dtype),
        # Many ties: small integers.
        torch.randint(0, 3, (6, 9), device=device).to(dtype),
        # Infinities and signed zeros (-0.0 == 0.0 is a tie).
        torch.tensor([[-math.inf] * 3, [1.0, math.inf, math.inf], [-0.0, 0.0, -1.0]], device=device).to(dtype),
        # Non-contiguous: a transposed [N, B] tensor and a strided slice.
        torch.randn(8, 4, device=device).to(dtype).t(),
        torch.randn(4, 20, device=device).to(dtype)[:, ::3],
    ]
    return samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(device, dtype):
    for scores in sample_inputs(device, dtype):
        out = ops.select_anchor(scores)
        assert out.dtype == torch.int64 and out.shape == (scores.shape[0],) and out.device == scores.device
        assert torch.equal(out.cpu(), reference_select_anchor(scores.cpu()))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_lowest_index(device):
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 0.5, 1.0]], device=device)
    assert ops.select_anchor(scores).tolist() == [1, 0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    assert ops.select_anchor(torch.zeros(0, 4, device=device)).shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("position", [(0, 0), (2, 4), (3, 6)])
def test_nan_raises(device, dtype, position):
    scores = torch.randn(4, 7, device=device).to(dtype)
    scores[position] = float("nan")
    with pytest.raises(ValueError, match=rf"scores must not contain NaN, got NaN in row {position[0]}"):
        ops.select_anchor(scores)


@pytest.mark.parametrize(
    "scores, exc, match",
    [
        (torch.zeros(2, 3, dtype=torch.int64), TypeError, "scores must be a floating tensor"),
        (torch.zeros(3), RuntimeError, r"scores must have shape \[B, N\]"),
        (torch.zeros(2, 0), RuntimeError, r"scores must have at least one crop"),
    ],
)
def test_bad_metadata(scores, exc, match):
    with pytest.raises(exc, match=match):
        ops.select_anchor(scores)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype in DTYPES:
        for scores in sample_inputs(device, dtype)[:3]:
            # Scores from a model require grad; the int64 output never does.
            torch.library.opcheck(torch.ops.lmcl.select_anchor.default, (scores.detach().requires_grad_(),))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    scores = torch.randn(5, 7)

    def fn(s):
        return ops.select_anchor(s * 2.0) + 1

    assert torch.equal(torch.compile(fn, fullgraph=True, dynamic=dynamic)(scores), fn(scores))


@pytest.mark.parametrize("grid", [(256, 4096), (2, 2), (1, 1)], ids=lambda g: f"t{g[0]}-b{g[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grid_runner_matches_cpu(grid_runner, grid, dtype):
    for scores in sample_inputs("cpu", dtype) + [torch.randn(11, 5).to(dtype)]:
        assert torch.equal(grid_runner.select_anchor(scores, *grid, True), ops.select_anchor(scores))
    assert grid_runner.select_anchor(torch.zeros(0, 3, dtype=dtype), *grid, True).shape == (0,)


def test_grid_runner_nan_check(grid_runner):
    """Unchecked, the launch body flags a NaN row with -1; checked (the CUDA op), it asserts in the kernel
    with the CPU op's message (a ValueError on the grid runner, a device-side assert on the GPU)."""
    scores = torch.randn(9, 4)
    scores[5, 2] = float("nan")
    scores[7, 0] = float("nan")
    out = grid_runner.select_anchor(scores, 2, 2, False)
    assert out[5] == -1 and out[7] == -1 and (out[[0, 1, 2, 3, 4, 6, 8]] >= 0).all()
    with pytest.raises(ValueError, match="scores must not contain NaN, got NaN in row 5"):
        grid_runner.select_anchor(scores, 2, 2, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for dtype in DTYPES:
        for scores in sample_inputs("cpu", dtype):
            assert torch.equal(ops.select_anchor(scores.cuda()).cpu(), ops.select_anchor(scores))
