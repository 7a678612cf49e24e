"""Trainer building blocks on their own: config, schedule, mutual-learning pieces, boxes, checkpoints."""
import argparse
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmcl_fast.core import checkpoint as ckpt_io
from lmcl_fast.core.config import (
    SHAPE_FIELDS,
    ConfigMismatchError,
    TrainConfig,
    add_config_args,
    check_compatible,
    config_from_args,
)
from lmcl_fast.core.pipeline import grid_boxes
from lmcl_fast.core.scoring import prior_logits
from lmcl_fast.models import build_model
from lmcl_fast.train.mutual import ema_update, symmetric_kl
from lmcl_fast.train.schedule import make_scheduler, warmup_cosine
from lmcl_testing import TOLERANCES


# ------------------------------------------------------------------------------------------------ config
def test_config_json_round_trip(tmp_path):
    cfg = TrainConfig(arch="tiny", mean=(0.5, 0.5, 0.5), lr=1e-3, mutual="ema")
    path = tmp_path / "config.json"
    cfg.to_json(str(path))
    assert TrainConfig.from_json(str(path)) == cfg
    assert json.loads(path.read_text())["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("field,value", [("arch", "vgg"), ("mutual", "solo"), ("anchor", "first"), ("n_crops", 1),
                                         ("batch_size", 1), ("crop_scale_min", 0.0), ("train_frac", 1.0), ("epochs", 0),
                                         ("amp", "fp8"), ("mean", (0.5, 0.5))])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_rejects_unknown_json_field():
    with pytest.raises(ValueError, match="unknown fields"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_cli_flags_cover_every_field_and_override_only_what_is_given():
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--arch", "tiny", "--no-hflip", "--mean", "0.1", "0.2", "0.3", "--lambda-lmc", "2"])
    assert set(vars(args)) == {"arch", "hflip", "mean", "lambda_lmc"}
    base = TrainConfig(lr=5e-4)
    cfg = config_from_args(args, base)
    assert (cfg.arch, cfg.hflip, cfg.mean, cfg.lambda_lmc, cfg.lr) == ("tiny", False, (0.1, 0.2, 0.3), 2.0, 5e-4)
    help_text = parser.format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text


def test_check_compatible_names_the_shape_fields():
    saved = TrainConfig(arch="tiny").to_dict()
    check_compatible(TrainConfig(arch="tiny", lr=1.0, epochs=99), saved, "ckpt")  # non-shape fields may change
    for field, value in [("arch", "resnet18"), ("embed_dim", 64), ("proj_hidden", 32), ("head_hidden", 16),
                         ("mutual", "ema")]:
        assert field in SHAPE_FIELDS
        with pytest.raises(ConfigMismatchError, match=field):
            check_compatible(TrainConfig(arch="tiny").replace(**{field: value}), saved, "ckpt")


# ---------------------------------------------------------------------------------------------- schedule
def test_warmup_cosine_shape():
    total, warmup, low = 100, 10, 0.01
    f = [warmup_cosine(s, total, warmup, low) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[warmup - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:warmup - 1], f[1:warmup]))
    assert all(a >= b for a, b in zip(f[warmup:], f[warmup + 1:]))
    assert f[warmup] == pytest.approx(1.0) and f[total] == pytest.approx(low)
    mid = warmup + (total - warmup) // 2
    assert f[mid] == pytest.approx(low + (1 - low) * 0.5)


def test_scheduler_drives_the_optimizer():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = make_scheduler(opt, total=20, warmup_frac=0.1, min_ratio=0.0)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[-1] < 0.01


# --------------------------------------------------------------------------------------- mutual learning
def _kl_reference(a, b, t):
    pa, pb = F.log_softmax(a.double() / t, 1), F.log_softmax(b.double() / t, 1)
    kl_ab = F.kl_div(pb, pa, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    kl_ba = F.kl_div(pa, pb, log_target=True, reduction="batchmean")
    return 0.5 * (kl_ab + kl_ba)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_symmetric_kl_matches_reference(t):
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    out = symmetric_kl(a, b, t)
    torch.testing.assert_close(out.double(), _kl_reference(a, b, t), **{"rtol": 1e-5, "atol": 1e-6})
    torch.testing.assert_close(out, symmetric_kl(b, a, t))
    assert symmetric_kl(a, a.clone(), t).abs() < 1e-7
    # Adding a constant per row does not change a softmax.
    torch.testing.assert_close(symmetric_kl(a + 3.0, b, t), out)


def test_symmetric_kl_gradcheck():
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    # symmetric_kl computes in float32 (training precision): gradcheck the float64 reference, then compare
    # symmetric_kl's float32 gradients with it.
    assert torch.autograd.gradcheck(lambda x, y: _kl_reference(x, y, 1.0), (a, b))
    x = a.detach().float().requires_grad_()
    y = b.detach().float().requires_grad_()
    symmetric_kl(x, y).backward()
    ra, rb = torch.autograd.grad(_kl_reference(a, b, 1.0), (a, b))
    torch.testing.assert_close(x.grad.double(), ra, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(y.grad.double(), rb, rtol=1e-4, atol=1e-6)


def test_ema_update():
    torch.manual_seed(1)
    student, teacher = build_model("tiny"), build_model("tiny")
    student.train()(torch.randn(4, 3, 16, 16))  # moves the BN running statistics
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    s = student.state_dict()
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * s[name])
    s_buffers = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        assert torch.equal(b, s_buffers[name])


def test_prior_logits_scale_free_and_centred():
    s = torch.rand(3, 5) + 0.1
    p = prior_logits(s)
    torch.testing.assert_close(p.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(prior_logits(1e4 * s), p, atol=1e-5, rtol=1e-5)
    assert torch.equal(p.argmax(1), s.argmax(1))
    assert torch.isfinite(prior_logits(torch.zeros(2, 4))).all()


# -------------------------------------------------------------------------------------------- eval boxes
def test_grid_boxes_inside_and_deterministic():
    h = torch.tensor([500, 300, 40, 20])
    w = torch.tensor([500, 700, 90, 20])
    boxes = grid_boxes(h, w, 3, 0.5, 32)
    assert boxes.shape == (4, 9, 4) and boxes.dtype == torch.int64
    top, left, bh, bw = boxes.unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all()
    assert (top + bh <= h[:, None]).all() and (left + bw <= w[:, None]).all()
    assert bh[0, 0] == 250 and bh[1, 0] == 150 and bh[2, 0] == 32 and bh[3, 0] == 20  # clipped to min(h, w)
    # Corners of the lattice, raster order.
    assert boxes[0, 0].tolist() == [0, 0, 250, 250] and boxes[0, 8].tolist() == [250, 250, 250, 250]
    assert boxes[1, 2].tolist() == [0, 550, 150, 150]
    assert torch.equal(boxes, grid_boxes(h, w, 3, 0.5, 32))
    assert grid_boxes(h[:1], w[:1], 1, 0.5, 32)[0, 0].tolist() == [125, 125, 250, 250]


# ------------------------------------------------------------------------------------------ checkpoints
def test_save_atomic_keeps_previous_file_on_failure(tmp_path):
    path = str(tmp_path / "last.pt")
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "v": 1}, path)
    with pytest.raises(Exception):
        ckpt_io.save_atomic({"bad": lambda: 0}, path)  # a lambda cannot be pickled
    assert torch.load(path, weights_only=True)["v"] == 1


def test_load_rejects_foreign_files(tmp_path):
    path = str(tmp_path / "x.pt")
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not an lmcl_fast checkpoint"):
        ckpt_io.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt_io.load(str(tmp_path / "missing.pt"))


def test_rng_state_round_trip():
    state = ckpt_io.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt_io.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ------------------------------------------------------------------------------------------ distributed
def test_dist_context_from_env(monkeypatch):
    from lmcl_fast.core.dist import DistContext, resolve_device

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = DistContext.from_env()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.group) == (0, 1, True, None)
    assert not DistContext(rank=1, world_size=2).is_main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="process group"):
        DistContext.from_env()
    assert resolve_device("cpu", ctx) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            resolve_device("cuda", ctx)


# ------------------------------------------------------------------------------------------- objective
@pytest.mark.parametrize("mutual", ["peer", "ema"])
def test_objective_terms_and_gradients(mutual):
    from lmcl_fast import ops
    from lmcl_fast.core.scoring import crop_scores, image_quality
    from lmcl_fast.train.objective import compute_losses

    torch.manual_seed(3)
    cfg = TrainConfig(arch="tiny", mutual=mutual, lambda_lmc=0.3, lambda_mutual=0.7, prior_weight=0.5)
    B, N = 3, 4
    a, b = build_model("tiny"), build_model("tiny")
    crops = torch.randn(B * N, 3, 16, 16)
    prior = torch.randn(B, N)
    target = torch.randn(B)
    out_a = a(crops)
    out_b = b(crops) if mutual == "peer" else b(crops)._replace(z=b(crops).z.detach())
    terms = compute_losses(cfg, out_a, out_b, prior, target)

    score_a, score_b = crop_scores(out_a, prior, 0.5), crop_scores(out_b, prior, 0.5)
    anchor = (score_a + score_b).argmax(1)
    za, zb = out_a.z.view(B, N, -1), out_b.z.view(B, N, -1)
    kw = dict(tau=cfg.tau, intra_weight=cfg.intra_weight, manifold_weight=cfg.manifold_weight)
    qa = F.smooth_l1_loss(image_quality(out_a, score_a, "mean"), target)
    if mutual == "peer":
        lmc = 0.5 * (ops.lmc_loss(za, anchor, zb, **kw) + ops.lmc_loss(zb, anchor, za, **kw))
        quality = 0.5 * (qa + F.smooth_l1_loss(image_quality(out_b, score_b, "mean"), target))
    else:
        lmc, quality = ops.lmc_loss(za, anchor, zb, **kw), qa
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    torch.testing.assert_close(terms.lmc, lmc, **tol)
    torch.testing.assert_close(terms.quality, quality, **tol)
    torch.testing.assert_close(terms.kl, symmetric_kl(score_a, score_b), **tol)
    torch.testing.assert_close(terms.total, quality + 0.3 * lmc + 0.7 * terms.kl, **tol)

    terms.total.backward()
    assert all(p.grad is not None for p in a.parameters())
    # Peer: both networks learn. EMA: the teacher's outputs carry no gradient for its embeddings.
    assert (b.projection.net[0].weight.grad is not None) == (mutual == "peer")


def test_objective_single_branch_and_random_anchor():
    """The ablation switches: mutual=none (no second branch: own detached embeddings as the teacher, no KL) and
    anchor=random (uniform anchors from the global torch generator)."""
    from lmcl_fast import ops
    from lmcl_fast.core.scoring import crop_scores
    from lmcl_fast.train.objective import compute_losses

    torch.manual_seed(3)
    B, N = 4, 5
    a = build_model("tiny")
    crops, prior, target = torch.randn(B * N, 3, 16, 16), torch.randn(B, N), torch.randn(B)
    out = a(crops)
    z = out.z.view(B, N, -1)
    cfg = TrainConfig(arch="tiny", mutual="none", lambda_lmc=0.3)
    kw = dict(tau=cfg.tau, intra_weight=cfg.intra_weight, manifold_weight=cfg.manifold_weight)
    terms = compute_losses(cfg, out, None, prior, target)
    anchor = crop_scores(out, prior, cfg.prior_weight).argmax(1)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    torch.testing.assert_close(terms.lmc, ops.lmc_loss(z, anchor, z.detach(), **kw), **tol)
    assert terms.kl.item() == 0.0

    random_cfg = cfg.replace(anchor="random")
    torch.manual_seed(11)
    terms = compute_losses(random_cfg, out, None, prior, target)
    torch.manual_seed(11)
    drawn = torch.randint(0, N, (B,))
    torch.testing.assert_close(terms.lmc, ops.lmc_loss(z, drawn, z.detach(), **kw), **tol)


def test_saliency_pooling_weights_crops_by_score():
    from lmcl_fast.core.scoring import image_quality
    from lmcl_fast.models import CropOutputs

    q = torch.tensor([1.0, 3.0, 5.0, 7.0])
    out = CropOutputs(torch.zeros(4, 2), torch.zeros(4), q)
    scores = torch.tensor([[0.0, 0.0], [0.0, 50.0]])
    torch.testing.assert_close(image_quality(out, scores, "mean"), torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(image_quality(out, scores, "saliency"), torch.tensor([2.0, 7.0]))
