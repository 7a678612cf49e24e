"""What only a GPU can check (skipped without one; bench/gpu_check.sh runs them, the small ones also under
compute-sanitizer): streams, a second device, mixed-precision training steps, >2^31-element outputs and a
large lmc_loss against float64. The per-op CUDA-vs-CPU tests live beside each op's other tests
(test_<op>.py, `-k cuda`)."""
import pytest
import torch

import lmcl_fast  # noqa: F401  (registers torch.ops.lmcl)
from lmcl_fast import ops
from lmcl_testing import TOLERANCES
from test_lmc_loss import _case, assert_grad_close, reference_lmc_loss
from test_multi_crop import reference_multi_crop

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _inputs(seed=0, B=3, N=4, H=40, W=56, S=16, D=32):
    """Host inputs of every op (float images need gradients, so both image kinds are there)."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=g)
    f32 = torch.rand(B, 3, H, W, generator=g)
    boxes = ops.sample_boxes([H] * B, [W] * B, N, scales=(0.3, 1.0), min_size=4, generator=g)
    flip = torch.rand(B, N, generator=g) < 0.5
    case = _case(B, N, D, tau=0.07, intra_weight=0.4, seed=seed)
    return dict(u8=u8, f32=f32, boxes=boxes, flip=flip, S=S, z=case["z"], teacher=case["teacher"],
                anchor=case["anchor_idx"], grad_crops=torch.randn(B, N, 3, S, S, generator=g),
                sal=torch.rand(B, H, W, generator=g), scores=torch.randn(B, N, generator=g))


def _run_all_ops(x):
    """Forward and backward of every op on the device of x's tensors; returns name -> tensor."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = {"multi_crop_u8_bf16": ops.multi_crop(x["u8"], x["boxes"], x["S"], mean, std, x["flip"],
                                                out_dtype=torch.bfloat16)}
    f32 = x["f32"].detach().requires_grad_(True)
    crops = ops.multi_crop(f32, x["boxes"], x["S"], mean, std, x["flip"])
    (crops * x["grad_crops"]).sum().backward()
    out.update(multi_crop_f32=crops.detach(), multi_crop_grad=f32.grad)
    sal = x["sal"].detach().requires_grad_(True)
    means = ops.crop_saliency(sal, x["boxes"])
    means.square().sum().backward()
    out.update(crop_saliency=means.detach(), crop_saliency_grad=sal.grad)
    out["spectral_residual"] = ops.spectral_residual(x["u8"])
    out["select_anchor"] = ops.select_anchor(x["scores"])
    z = x["z"].detach().requires_grad_(True)
    t = x["teacher"].detach().requires_grad_(True)
    loss = ops.lmc_loss(z, x["anchor"], t, tau=0.07, intra_weight=0.4)
    loss.backward()
    out.update(lmc_loss=loss.detach(), lmc_grad_z=z.grad, lmc_grad_t=t.grad)
    return out


# Results that may differ in the last bits between runs: backward passes that accumulate with atomics
# (multi_crop) or index_put_ (crop_saliency), and spectral_residual's cuFFT / cuDNN (algorithm choice).
_NOT_BITWISE = {"multi_crop_grad": dict(rtol=1e-6, atol=1e-6), "crop_saliency_grad": dict(rtol=1e-6, atol=1e-9),
                "spectral_residual": dict(rtol=1e-6, atol=1e-7)}


def _assert_same(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        g, e = got[name], expected[name]
        assert g.device == e.device and g.dtype == e.dtype and g.shape == e.shape, name
        if name in _NOT_BITWISE:
            torch.testing.assert_close(g, e, **_NOT_BITWISE[name], msg=name)
        else:
            assert torch.equal(g, e), f"{name}: max |diff| {(g.double() - e.double()).abs().max().item()}"


def _to(x, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}


def test_small_ops_for_the_sanitizer():
    """Every op forward and backward at small sizes against the CPU, several key tiles for lmc_loss: the
    test gpu_check.sh runs under compute-sanitizer (memcheck, racecheck, initcheck)."""
    x = _inputs()
    gpu = _run_all_ops(_to(x, "cuda"))
    cpu = _run_all_ops(x)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    for name in ("multi_crop_f32", "crop_saliency", "lmc_loss"):
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], **tol, msg=name)
    assert torch.equal(gpu["select_anchor"].cpu(), cpu["select_anchor"])
    z, t, a = x["z"].cuda(), x["teacher"].cuda(), x["anchor"].cuda()
    tiled = torch.ops.lmcl.lmc_loss(z, a, z, t, 0, 0.07, 0.4, 1.0, 5)  # 12 key rows in tiles of 5
    torch.testing.assert_close(tiled[0].cpu(), cpu["lmc_loss"], **tol)
    grads = torch.ops.lmcl._lmc_loss_backward(torch.ones((), device="cuda"), z, a, z, t, *tiled[1:4], 0, 0.07, 0.4,
                                              1.0, True, True, True, 5)
    assert_grad_close((grads[0] + grads[1]).cpu(), cpu["lmc_grad_z"])  # z is both the queries and the keys
    assert_grad_close(grads[2].cpu(), cpu["lmc_grad_t"])


def test_every_op_on_a_side_stream_matches_the_default_stream():
    """The kernels must run on the current stream. The side stream first sleeps, then writes the inputs: a
    kernel launched on another stream would read them before they exist."""
    dev = _to(_inputs(seed=1), "cuda")
    expected = _run_all_ops(dev)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # tens of ms of spinning, then device-side copies of the inputs
        x = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in dev.items()}
        got = _run_all_ops(x)
    side.synchronize()
    _assert_same(got, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_inputs_on_cuda1_while_cuda0_is_current():
    host = _inputs(seed=2)
    with torch.cuda.device(1):
        expected = _run_all_ops(_to(host, "cuda:1"))
    with torch.cuda.device(0):
        got = _run_all_ops(_to(host, "cuda:1"))
        torch.cuda.synchronize(1)
    for v in got.values():
        assert v.device == torch.device("cuda:1")
    _assert_same(got, expected)


def _train_step(amp_dtype, device="cuda"):
    """One training step of the real pipeline (sample_boxes, multi_crop, spectral_residual, crop_saliency,
    two ResNet-18 branches, select_anchor, lmc_loss, KL, SmoothL1, AdamW) with autocast in `amp_dtype` (None:
    fp32) and a GradScaler for fp16. Returns the losses, the lmc term's gradient w.r.t. branch a's embeddings
    with the float64 reference's gradient on the same embeddings and anchors, the unscaled parameter
    gradients, whether the scaler skipped the step, and the updated parameters."""
    from lmcl_fast.core.amp import autocast
    from lmcl_fast.core.config import TrainConfig
    from lmcl_fast.core.pipeline import CropPipeline
    from lmcl_fast.core.scoring import crop_scores
    from lmcl_fast.models import build_model
    from lmcl_fast.train.objective import compute_losses

    device = torch.device(device)
    cfg = TrainConfig(arch="resnet18", n_crops=4, crop_size=64, min_crop=16, mutual="peer", device=device.type)
    torch.manual_seed(0)
    nets = [build_model(cfg.arch, cfg.embed_dim, cfg.proj_hidden, cfg.head_hidden).to(device) for _ in range(2)]
    g = torch.Generator().manual_seed(3)
    B = 8
    images = torch.randint(0, 256, (B, 96, 128, 3), dtype=torch.uint8, generator=g).to(device)
    sizes = torch.tensor([96] * B), torch.tensor([128] * B)
    target = torch.randn(B, generator=g).to(device)
    crops, prior = CropPipeline(cfg, device).train_crops(images, *sizes, seeds=list(range(B)))
    flat = crops.flatten(0, 1)
    with autocast(device, amp_dtype):
        out_a, out_b = nets[0](flat), nets[1](flat)
    losses = compute_losses(cfg, out_a, out_b, prior, target)
    # lmc = 0.5 * (lmc(z_a, anchor, z_b.detach()) + lmc(z_b, anchor, z_a.detach())): z_a's gradient is half the
    # first term's; the reference recomputes it in float64 from the same (rounded) embeddings and anchors.
    (lmc_grad,) = torch.autograd.grad(losses.lmc, out_a.z, retain_graph=True)
    score = 0.5 * (crop_scores(out_a, prior, cfg.prior_weight) + crop_scores(out_b, prior, cfg.prior_weight))
    anchor = ops.select_anchor(score.detach())
    z_a = out_a.z.detach().view(B, cfg.n_crops, -1).double().requires_grad_(True)
    ref = reference_lmc_loss(z_a, anchor, out_b.z.detach().view_as(z_a).double(), tau=cfg.tau,
                             intra_weight=cfg.intra_weight, manifold_weight=cfg.manifold_weight)
    (ref_grad,) = torch.autograd.grad(0.5 * ref, z_a)
    # A moderate first scale: GradScaler's default 2^16 usually overflows (and skips) the first fp16 steps.
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10, enabled=amp_dtype == torch.float16)
    scaler.scale(losses.total).backward()
    params = [p for net in nets for p in net.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    scaler.unscale_(opt)
    grads = [p.grad.detach().clone() for p in params if p.grad is not None]
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(opt)
    scaler.update()
    skipped = scaler.is_enabled() and scaler.get_scale() < scale  # an inf/NaN gradient halves the scale
    return losses, lmc_grad.view_as(ref_grad), ref_grad, grads, skipped, params


@pytest.mark.parametrize("amp_dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16-autocast", "fp16-gradscaler"])
def test_training_step_mixed_precision(amp_dtype):
    losses, lmc_grad, ref_grad, grads, skipped, params = _train_step(None if amp_dtype == torch.float32
                                                                     else amp_dtype)
    assert all(torch.isfinite(v).all() for v in losses), losses
    assert not skipped, "GradScaler found a non-finite gradient and skipped the step"
    assert all(torch.isfinite(g).all() for g in grads) and all(torch.isfinite(p).all() for p in params)
    assert lmc_grad.dtype == (torch.float32 if amp_dtype == torch.float32 else amp_dtype)
    # Math in float32 whatever the input dtype; the gradient is rounded once to the embeddings' dtype.
    if amp_dtype == torch.float32:
        assert_grad_close(lmc_grad, ref_grad)
    else:
        err = (lmc_grad.double() - ref_grad).abs().max().item()
        assert err <= 2 * torch.finfo(amp_dtype).eps * ref_grad.abs().max().item(), err


def test_multi_crop_output_beyond_2_31_elements():
    """int64 indexing: 683 crops of 3 x 1024 x 1024 (2.15e9 elements, 4.3 GB of fp16), forward and backward;
    the crops past element 2^31 against the reference and against the same crops cut alone."""
    S, N = 1024, 683
    assert N * 3 * S * S > 2**31
    g = torch.Generator().manual_seed(4)
    images = torch.rand(1, 3, 200, 300, generator=g).cuda().requires_grad_(True)
    boxes = ops.sample_boxes([200], [300], N, scales=(0.2, 1.0), min_size=8, generator=g).cuda()
    flip = (torch.rand(1, N, generator=g) < 0.5).cuda()
    out = ops.multi_crop(images, boxes, S, flip=flip, out_dtype=torch.float16)
    assert out.shape == (1, N, 3, S, S) and out.numel() > 2**31
    tail = slice(N - 3, N)  # all beyond element 2^31
    ref = reference_multi_crop(images.detach().cpu(), boxes[:, tail].cpu(), (S, S), flip=flip[:, tail].cpu())
    tol = TOLERANCES[("multi_crop", torch.float32)]
    err = (out[:, tail].float().cpu() - ref.float()).abs()
    assert (err <= torch.finfo(torch.float16).eps * ref.abs().float() + tol["atol"]).all(), err.max()
    tail_grad = torch.randn(1, 3, 3, S, S, generator=g).to("cuda", torch.float16)
    grad = torch.zeros_like(out)
    grad[:, tail] = tail_grad
    (gi,) = torch.autograd.grad(out, images, grad)
    del out, grad
    alone = ops.multi_crop(images, boxes[:, tail], S, flip=flip[:, tail], out_dtype=torch.float16)
    (gi_alone,) = torch.autograd.grad(alone, images, tail_grad)
    torch.testing.assert_close(gi, gi_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tf32", [False, True], ids=["fp32-matmul", "tf32-allowed"])
def test_lmc_loss_b256_several_key_tiles_against_float64(tf32):
    """B=256, N=8, D=128 (2048 queries and keys) in key tiles of 600 (the last narrower, images split across
    tiles) and with the automatic tile, against the float64 reference on the CPU. With TF32 allowed for the
    caller's matmuls (set_float32_matmul_precision("high")) the loss must keep full float32 GEMMs."""
    case = _case(256, 8, 128, tau=0.07, intra_weight=0.5)
    z, t, a = case["z"], case["teacher"], case["anchor_idx"]
    ref, ref_grads = _ref_value_and_grads(z, t, a)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        zc, tc, ac = z.cuda(), t.cuda(), a.cuda()
        for key_tile in (600, 0):
            fwd = torch.ops.lmcl.lmc_loss(zc, ac, zc, tc, 0, 0.07, 0.5, 1.0, key_tile)
            torch.testing.assert_close(fwd[0].cpu().double(), ref, **TOLERANCES[("lmc_loss", torch.float32)])
            grads = torch.ops.lmcl._lmc_loss_backward(torch.ones((), device="cuda"), zc, ac, zc, tc, *fwd[1:4], 0,
                                                      0.07, 0.5, 1.0, True, True, True, key_tile)
            assert_grad_close((grads[0] + grads[1]).cpu(), ref_grads[0])  # z: queries and keys
            assert_grad_close(grads[2].cpu(), ref_grads[1])
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    finally:
        torch.set_float32_matmul_precision(before)


def _ref_value_and_grads(z, t, a):
    z64 = z.double().requires_grad_(True)
    t64 = t.double().requires_grad_(True)
    ref = reference_lmc_loss(z64, a, t64, tau=0.07, intra_weight=0.5)
    return ref.detach(), torch.autograd.grad(ref, [z64, t64])
