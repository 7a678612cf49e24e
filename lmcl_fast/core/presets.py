"""Named training configurations (`--preset NAME`): TrainConfig fields a preset sets; options given on the
command line override them."""
from __future__ import annotations

PRESETS = {
    # The tiny CNN on 64 x 64 native-resolution crops (scale 0.25 of a 256-pixel short side: resampling would
    # blur away the distortions), evaluated on a 4 x 4 tiling. `lmcl demo` trains it: about 2.5 minutes for
    # 18 epochs on the 2-core CPU sandbox (bench/RESULTS.md); 5 splits fit in 30 minutes there.
    "cpu-small": dict(arch="tiny", crop_size=64, crop_scale_min=0.25, crop_scale_max=0.25, n_crops=4,
                      batch_size=16, epochs=18, lr=2e-3, num_workers=2, device="cpu", log_every=20, eval_grid=4,
                      eval_scale=0.25),
    # The paper's backbone family on a GPU: ViT-S/16 (pass --weights with a timm vit_small_patch16_224 or
    # DeiT-S file) on 224-pixel crops, EMA teacher. A starting point, not measured or tuned here.
    "lml-iqa": dict(arch="vit_s16", crop_size=224, n_crops=8, batch_size=16, epochs=9, lr=1e-4, weight_decay=0.05,
                    warmup_frac=0.05, mutual="ema", eval_grid=5, eval_scale=0.5, amp="auto", device="auto",
                    num_workers=8),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return dict(PRESETS[name])
