"""One box rule for every op: the same checks and messages from the C++ kernels and the fake kernels."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lmcl_fast  # noqa: F401  (registers the ops and their fakes)


def _multi_crop(boxes):
    images = torch.zeros(2, 3, 6, 8)
    return torch.ops.lmcl.multi_crop.default(images, boxes, [4, 4], None, None, None, torch.float32)


def _crop_saliency(boxes):
    return torch.ops.lmcl.crop_saliency.default(torch.zeros(2, 6, 8), boxes)


OPS = {"multi_crop": _multi_crop, "crop_saliency": _crop_saliency}
GOOD = torch.tensor([[[0, 0, 2, 2]] * 3] * 2)
BAD_METADATA = {
    "dtype": GOOD.float(),
    "shape": GOOD[..., :3],
    "batch": GOOD[:1],
}


def _error(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return type(info.value), str(info.value).splitlines()[0]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", BAD_METADATA)
def test_fake_mirrors_boxes_checks(op, bad):
    eager = _error(OPS[op], BAD_METADATA[bad])
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = _error(OPS[op], BAD_METADATA[bad])
    # The rule and the argument match word for word; what came in is printed in each language's own way.
    assert eager[0] is fake[0]
    assert eager[1].split(", got")[0] == fake[1].split(", got")[0]
    assert eager[1].startswith(f"{op}: boxes must")


def test_one_invalid_box_message():
    boxes = GOOD.clone()
    boxes[1, 2] = torch.tensor([5, 0, 2, 1])
    messages = {op: _error(fn, boxes) for op, fn in OPS.items()}
    for op, (exc, message) in messages.items():
        assert exc is ValueError
        assert message.removeprefix(f"{op}: ") == messages["crop_saliency"][1].removeprefix("crop_saliency: ")
    assert "boxes[1, 2] = (top, left, height, width) = (5, 0, 2, 1)" in messages["multi_crop"][1]
