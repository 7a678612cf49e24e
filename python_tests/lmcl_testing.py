"""Constants and helpers shared by the test files: `from lmcl_testing import TOLERANCES, ulp`.

They live here, not in conftest.py, because python_tests/ and bench/ both have a conftest.py and pytest
imports both as the module `conftest` when it collects the two folders together (CI does).
"""
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# shared/ sits beside the repository root (CI's layout); LMCL_PHOTOS overrides it (e.g. in a git worktree).
PHOTOS = os.environ.get("LMCL_PHOTOS") or os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "photos"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Every tolerance used by a test comes from here, with the reason (STYLE.md §3, SPEC.md).
TOLERANCES = {
    # SPEC §1.1: float32 output within 1e-5 absolute of the float64 reference before normalisation.
    ("multi_crop", torch.float32): dict(atol=1e-5, rtol=0.0),
    # multi_crop backward (and its double backward) in float32 against float64 autograd of the reference:
    # each image-gradient element is a float32 sum of up to (crop / size + 2)^2 scaled output gradients.
    ("multi_crop backward", torch.float32): dict(rtol=1e-5, atol=1e-5),
    # SPEC §1.3: relative 1e-4 against the float64 mean.
    ("crop_saliency", torch.float32): dict(rtol=1e-4, atol=0.0),
    # crop_saliency's gradient (float32) against the float64 reference's autograd: SPEC §1.3's rtol, plus
    # an atol for pixels where float64 difference-array updates of overlapping boxes cancel to ~1e-17
    # instead of exactly 0 (test gradients are O(1), so real values are far above it).
    ("crop_saliency_backward", torch.float32): dict(rtol=1e-4, atol=1e-7),
    # spectral_residual (float32, a [0, 1] map) against its float64 numpy reference: float32 FFTs and
    # blur; measured <= 3.4e-6 absolute here (random images, Kodak photos), the rest is headroom for
    # other FFT backends (cuFFT, MKL).
    ("spectral_residual", torch.float32): dict(rtol=0.0, atol=5e-5),
    # STYLE §3: lmc_loss value and grads in float32 against a float64 reference.
    ("lmc_loss", torch.float32): dict(rtol=1e-5, atol=1e-6),
    # lmc_loss gradients in float32: the same rtol, with atol 1e-6 times the largest reference gradient
    # entry (entries that cancel to ~0, e.g. through the normalisation, keep an error set by the
    # gradient's scale, 1/tau large at tau = 0.01; SPEC §1.4 allows 1e-4 * max|g|).
    ("lmc_loss_grad", torch.float32): dict(rtol=1e-5, atol_per_max=1e-6),
    # DALI-CPU JPEG decode vs Pillow, uint8 pixels: measured max |difference| = 0 on the 2-core x86_64 sandbox
    # (quality 5..95, 4:4:4 / 4:2:2 / 4:2:0, RGB and grey; both decode with libjpeg-turbo, islow IDCT, fancy
    # upsampling). PNG/TIFF are lossless and must match exactly anyway.
    ("dali_decode_jpeg_cpu", torch.uint8): dict(atol=0, rtol=0),
    # Trainer: N epochs in one go vs N/2 + resume + N/2 on CPU replay the same computation (same crops,
    # order, RNG and optimizer state; CPU kernels deterministic at a fixed thread count): losses and
    # weights agree to float32 rounding (measured bit-equal on the 2-core sandbox).
    ("resume", torch.float32): dict(rtol=1e-6, atol=1e-7),
    # 2 processes x batch b vs 1 process x batch 2b (gloo, CPU): the same global-batch function, but float32
    # sums in another order (each rank's queries against the all-gathered keys, DDP's gradient all-reduce,
    # the mean of the ranks' logged losses) differ by ~1e-7 relative per step, and AdamW's normalised
    # updates carry that into later steps. Measured over the test's 12 steps of the tiny model on the
    # 2-core sandbox: <= 1.7e-5 relative (total, lmc, quality; peer and EMA mode), <= 3e-9 absolute for
    # the ~1e-7 KL.
    ("ddp", torch.float32): dict(rtol=1e-4, atol=1e-6),
}

# SPEC §1.1: fp16/bf16 multi_crop output may differ from the rounded reference by this many ulps.
MULTI_CROP_LOWP_ULPS = 1
# STYLE §3 (flash-attention rule): with fp16/bf16 inputs, lmc_loss's error against the float64
# reference may be at most this factor times the error of the eager reference run in that dtype.
LOWP_ERROR_FACTOR = 2.0


def ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of the floating grid of x's dtype at |x| (the larger one at a power of two).

    SPEC §1.1 allows fp16/bf16 output to differ from the rounded reference by one such unit.
    """
    finfo = torch.finfo(x.dtype)
    a = x.abs().to(torch.float64)
    exponent = torch.floor(torch.log2(a.clamp_min(finfo.smallest_normal)))
    # finfo.eps is 2**-(mantissa bits): the spacing at 1.0 (torch.finfo has no `nmant`).
    return (torch.exp2(exponent) * finfo.eps).to(torch.float64)


# A tiny model for the metric and scoring tests: untrained, scored on 2 x 2 grids of 16-pixel crops.
TINY_METRIC = dict(arch="tiny", embed_dim=8, proj_hidden=16, head_hidden=8, crop_size=16, eval_grid=2, min_crop=8,
                   device="cpu", amp="off")


def tiny_checkpoint(path, mutual="peer", lower_is_better=False, pooling="saliency") -> str:
    """A training checkpoint (current format) of untrained tiny branches, written without training."""
    from lmcl_fast.core import checkpoint as ckpt_io
    from lmcl_fast.core.config import TrainConfig
    from lmcl_fast.models import build_model

    cfg = TrainConfig(mutual=mutual, lower_is_better=lower_is_better, pooling=pooling, **TINY_METRIC)
    torch.manual_seed(1)
    models = {k: build_model(cfg.arch, cfg.embed_dim, cfg.proj_hidden, cfg.head_hidden).state_dict()
              for k in (("a", "b") if mutual == "peer" else ("a", "teacher"))}
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "config": cfg.to_dict(), "models": models,
                         "optimizer": {"state": {}, "param_groups": []}, "rng": [ckpt_io.rng_state()],
                         "mos_stats": {"mean": 50.0, "std": 10.0}}, str(path))
    return str(path)
