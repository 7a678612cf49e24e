"""lmcl_fast.load_metric / QualityMetric: input forms, batch independence (bit-equal on the CPU), DMOS
orientation, gradients with as_loss, file scoring, export, and refusal of checkpoints that carry code."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import lmcl_fast
from lmcl_fast.core import checkpoint as ckpt_io
from lmcl_fast.core.metric import export_metric
from lmcl_testing import tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    return lmcl_fast.load_metric(tiny_checkpoint(tmp_path_factory.mktemp("m") / "last.pt"), device="cpu")


def _images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for h, w in sizes]


def test_scores_do_not_depend_on_batch_mates(metric):
    imgs = _images([(40, 56), (64, 48), (33, 33), (64, 64), (50, 41)])
    alone = torch.cat([metric([im]) for im in imgs])
    together = metric(imgs)
    assert together.dtype == torch.float32 and together.shape == (5,)
    assert torch.equal(together, alone)  # bit-equal
    assert torch.equal(metric(imgs[::-1]), alone.flip(0))
    assert torch.equal(metric(imgs[1:3] + _images([(70, 90)], seed=5))[:2], alone[1:3])


def test_input_forms_agree(metric):
    imgs = _images([(48, 48)] * 3)
    u8 = torch.stack(imgs)  # [B, H, W, 3]
    f32 = u8.permute(0, 3, 1, 2).float() / 255  # [B, 3, H, W] in 0..1
    a, b = metric(u8), metric(f32)
    assert torch.equal(a, metric(imgs))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(metric(list(f32.double())), b)  # float64 is computed in float32
    assert metric([]).shape == (0,)
    with pytest.raises(ValueError, match="images"):
        metric(torch.zeros(2, 48, 48))
    with pytest.raises(ValueError, match=r"images\[1\]"):
        metric([imgs[0], torch.zeros(3, 5)])
    with pytest.raises(ValueError, match="mixes"):
        metric([imgs[0], f32[0]])


def test_lower_better_model_scores_in_dmos_units(tmp_path, metric):
    dmos = lmcl_fast.load_metric(tiny_checkpoint(tmp_path / "d.pt", lower_is_better=True), device="cpu")
    assert dmos.lower_better and not metric.lower_better
    imgs = _images([(40, 40), (48, 40)])
    # Same weights: the DMOS model's internal (larger-is-better) prediction is negated back to DMOS units.
    torch.testing.assert_close(dmos(imgs), -metric(imgs), rtol=0, atol=0)


def test_as_loss_gradcheck(tmp_path):
    m = lmcl_fast.load_metric(tiny_checkpoint(tmp_path / "g.pt", mutual="ema"), device="cpu", as_loss=True)
    assert not any(p.requires_grad for p in m.parameters())
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    out = m(x)
    assert out.requires_grad
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0
    # Computed in float32: finite differences with a large step and float32-sized tolerances.
    assert torch.autograd.gradcheck(m, (x,), eps=1e-3, atol=2e-2, rtol=5e-2, nondet_tol=0.0)
    with torch.no_grad():
        assert not m(x).requires_grad
    plain = lmcl_fast.load_metric(str(tmp_path / "g.pt"), device="cpu")
    assert not plain(x).requires_grad


def test_score_files_reports_unreadable(tmp_path, metric, caplog):
    imgs = _images([(40, 50), (60, 44)])
    paths = []
    for i, im in enumerate(imgs):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im.numpy()).save(paths[-1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"junk" * 20)
    with caplog.at_level(logging.WARNING, logger="lmcl_fast.metric"):
        scores = metric.score_files([paths[0], str(bad), paths[1]], batch_size=2)
    assert "bad.jpg" in caplog.text
    assert torch.isnan(scores[1]) and torch.equal(scores[[0, 2]], metric(imgs))


def test_export_is_small_and_scores_the_same(tmp_path, metric):
    ckpt = tiny_checkpoint(tmp_path / "last.pt")
    out = str(tmp_path / "model.lmcl")
    export_metric(ckpt, out)
    assert os.path.getsize(out) < os.path.getsize(ckpt)
    imgs = _images([(40, 40), (52, 44)])
    assert torch.equal(lmcl_fast.load_metric(out, "cpu")(imgs), metric(imgs))
    assert set(torch.load(out, weights_only=True)) == {"format", "config", "models", "mos_stats"}


def test_checkpoint_with_pickled_callable_is_refused(tmp_path):
    evil = str(tmp_path / "evil.pt")
    torch.save({"format": ckpt_io.FORMAT, "hook": os.system}, evil)
    with pytest.raises(ckpt_io.UnsafeCheckpointError, match=r"refusing to load .*evil\.pt.*system"):
        ckpt_io.load(evil)
    with pytest.raises(ckpt_io.UnsafeCheckpointError, match="could run arbitrary code"):
        lmcl_fast.load_metric(evil)
    with pytest.raises(ValueError, match="neither an lmcl_fast checkpoint"):
        torch.save({"format": 1}, str(tmp_path / "old.pt"))
        lmcl_fast.load_metric(str(tmp_path / "old.pt"))


def test_rng_state_loads_weights_only(tmp_path):
    path = str(tmp_path / "rng.pt")
    torch.save(ckpt_io.rng_state(), path)
    state = torch.load(path, weights_only=True)
    a = (torch.rand(2), np.random.rand(2))
    ckpt_io.set_rng_state(state)
    b = (torch.rand(2), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
