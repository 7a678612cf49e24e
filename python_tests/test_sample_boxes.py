"""sample_boxes (SPEC §1.2): multi-scale random square boxes, reproducible from a generator."""
import pytest
import torch

from lmcl_fast.ops import multi_crop, sample_boxes


def reference_sides(heights, widths, n, scales, min_size, seed):
    """SPEC §1.2 side rule, replaying the documented draw: one [B, n, 3] float64 uniform tensor whose
    first column is the scale."""
    u = torch.rand((len(heights), n, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    m = torch.minimum(torch.tensor(heights), torch.tensor(widths))[:, None].double()
    s = scales[0] + (scales[1] - scales[0]) * u[..., 0]
    return torch.round(s * m).clamp_min(min_size).minimum(m).long()


@pytest.mark.parametrize("scales,min_size", [((0.25, 1.0), 32), ((0.1, 0.3), 1), ((0.5, 0.5), 8)])
def test_boxes_follow_the_rule(scales, min_size):
    heights, widths = [384, 500, 64, 40], [512, 333, 64, 90]
    boxes = sample_boxes(heights, widths, 50, scales=scales, min_size=min_size,
                         generator=torch.Generator().manual_seed(7))
    assert boxes.dtype == torch.int64 and boxes.shape == (4, 50, 4)
    top, left, h, w = boxes.unbind(-1)
    H = torch.tensor(heights)[:, None]
    W = torch.tensor(widths)[:, None]
    assert torch.equal(h, w)
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all())
    assert bool((h <= torch.minimum(H, W)).all())
    assert torch.equal(h, reference_sides(heights, widths, 50, scales, min_size, seed=7))


def test_min_size_larger_than_image_gives_whole_short_side():
    boxes = sample_boxes([20, 50], [30, 10], 5, min_size=32, generator=torch.Generator().manual_seed(0))
    assert bool((boxes[0, :, 2] == 20).all() and (boxes[1, :, 2] == 10).all())
    assert bool((boxes[1, :, 1] == 0).all())  # a full-width box can only start at column 0


def test_placement_is_uniform_over_valid_corners():
    boxes = sample_boxes([10], [13], 4000, scales=(0.5, 0.5), min_size=1, generator=torch.Generator().manual_seed(1))
    assert bool((boxes[..., 2] == 5).all())
    tops = torch.bincount(boxes[0, :, 0], minlength=6)
    lefts = torch.bincount(boxes[0, :, 1], minlength=9)
    assert tops.numel() == 6 and lefts.numel() == 9  # never past the last valid corner
    # every corner drawn, each near its expected count (6 sigma of a Poisson count)
    for counts in (tops, lefts):
        expected = 4000 / counts.numel()
        assert bool(((counts - expected).abs() < 6 * expected**0.5).all()), counts


def test_same_generator_state_same_boxes():
    a = sample_boxes([100, 80], [90, 120], 6, generator=torch.Generator().manual_seed(5))
    b = sample_boxes([100, 80], [90, 120], 6, generator=torch.Generator().manual_seed(5))
    c = sample_boxes([100, 80], [90, 120], 6, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = sample_boxes([100, 80], [90, 120], 6)
    torch.manual_seed(3)
    assert torch.equal(d, sample_boxes([100, 80], [90, 120], 6))


def test_tensor_sizes_and_padded_batch_feed_multi_crop():
    """Images padded into one batch tensor: each image's boxes stay inside its own valid region."""
    heights = torch.tensor([48, 64])
    widths = torch.tensor([64, 40])
    boxes = sample_boxes(heights, widths, 3, min_size=8, generator=torch.Generator().manual_seed(2))
    assert bool((boxes[..., 0] + boxes[..., 2] <= heights[:, None]).all())
    assert bool((boxes[..., 1] + boxes[..., 3] <= widths[:, None]).all())
    images = torch.zeros((2, 64, 64, 3), dtype=torch.uint8)
    assert multi_crop(images, boxes, 16).shape == (2, 3, 3, 16, 16)
    assert sample_boxes([], [], 4).shape == (0, 4, 4)
    assert sample_boxes([30], [30], 0).shape == (1, 0, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scales=(0.5, 0.25)), "scales"),
        (dict(scales=(0.0, 0.5)), "scales"),
        (dict(scales=(0.5, 1.5)), "scales"),
        (dict(scales=0.5), "scales"),
        (dict(min_size=0), "min_size"),
        (dict(min_size=2.5), "min_size"),
        (dict(n=-1), "n must"),
        (dict(n=2.0), "n must"),
        (dict(heights=[10, 20]), "same length"),
        (dict(heights=[0]), "heights and widths must be >= 1"),
        (dict(heights=[10.5]), "heights"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(heights=[10], widths=[12], n=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sample_boxes(**args)
