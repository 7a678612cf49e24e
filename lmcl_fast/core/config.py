"""The training configuration: one dataclass, every field with a documented default. The CLI exposes
each field as `--<field-with-dashes>`; a run writes the full config as JSON next to its checkpoints."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _f(default, help: str, choices: tuple | None = None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # data
    root: str = _f("", "image root of the dataset")
    csv: str = _f("", "CSV with columns name,mos[,std] (names relative to root)")
    lower_is_better: bool = _f(False, "MOS column is a distortion score (smaller = better)")
    out_dir: str = _f("runs/lmcl", "output directory (one split_XX/ folder per split)")
    splits: int = _f(10, "number of random content-aware train/test splits (one training run each)")
    split_seed: int = _f(0, "seed of the random splits")
    train_frac: float = _f(0.8, "fraction of reference contents in the training part of each split")
    holdout_types: str = _f("", "comma-separated distortion types left out of training; each split's test part "
                            "keeps only those types and the pristine images (needs a type column or "
                            "<ref>__<type>_<level> names, as make-synthetic writes)")
    num_workers: int = _f(2, "data loader worker processes")
    decoder: str = _f("auto", "image decoder (auto: DALI on CUDA when installed, else Pillow)",
                      ("auto", "pillow", "dali"))
    # model
    arch: str = _f("resnet18", "backbone", ("tiny", "resnet18", "resnet50", "vit_s16"))
    weights: str = _f("", "weight file to initialise the backbone(s): a torchvision ResNet state_dict, or a timm "
                      "vit_small_patch16_224 / DeiT-S one for vit_s16 (the classifier is dropped)")
    embed_dim: int = _f(128, "contrastive embedding size D")
    proj_hidden: int = _f(512, "hidden width of the projection MLP")
    head_hidden: int = _f(128, "hidden width of the saliency and quality MLPs")
    mutual: str = _f("peer", "second branch: a peer network trained alongside, an EMA teacher, or none (one network, "
                     "its own detached embeddings as the lmc_loss teacher, no KL term)", ("peer", "ema", "none"))
    ema_momentum: float = _f(0.996, "EMA teacher momentum (mutual=ema)")
    batch_norm: str = _f("auto", "BatchNorm training: sync = SyncBatchNorm over the ranks (CUDA), local = each "
                         "process's own batch, frozen = running statistics (no batch dependence); auto = sync "
                         "under torchrun on CUDA, else local", ("auto", "sync", "local", "frozen"))
    # crops
    n_crops: int = _f(4, "crops per training image (N)")
    crop_size: int = _f(224, "side of the resampled crops (pixels)")
    crop_scale_min: float = _f(0.25, "smallest crop side as a fraction of min(H, W)")
    crop_scale_max: float = _f(1.0, "largest crop side as a fraction of min(H, W)")
    min_crop: int = _f(32, "smallest crop side in source pixels")
    hflip: bool = _f(True, "random left-right flips of training crops")
    mean: tuple = _f(IMAGENET_MEAN, "per-channel normalisation mean (0..1 scale)")
    std: tuple = _f(IMAGENET_STD, "per-channel normalisation std (0..1 scale)")
    eval_grid: int = _f(3, "evaluation crops: a fixed eval_grid x eval_grid grid of boxes per image")
    eval_scale: float = _f(0.5, "side of the evaluation boxes as a fraction of min(H, W)")
    # objective
    lambda_lmc: float = _f(0.1, "weight of lmc_loss")
    lambda_mutual: float = _f(0.5, "weight of the symmetric KL between the branches' crop distributions")
    tau: float = _f(0.1, "lmc_loss temperature")
    intra_weight: float = _f(0.5, "lmc_loss weight of the intra-class (same image) negatives")
    manifold_weight: float = _f(1.0, "lmc_loss weight of the local-manifold term")
    anchor: str = _f("salient", "lmc_loss anchor: the most salient crop, or a uniformly random one (ablation)",
                     ("salient", "random"))
    kl_temperature: float = _f(1.0, "temperature of the softmax over crop saliency scores")
    prior_weight: float = _f(1.0, "weight of the spectral-residual saliency prior in the crop score")
    smoothl1_beta: float = _f(1.0, "SmoothL1 beta of the quality loss (normalised MOS units)")
    pooling: str = _f("mean", "image score from crop scores: plain mean, or softmax(saliency)-weighted",
                      ("mean", "saliency"))
    # optimisation
    epochs: int = _f(20, "training epochs per split")
    batch_size: int = _f(16, "images per batch (B; every image gives n_crops crops)")
    lr: float = _f(3e-4, "AdamW peak learning rate")
    weight_decay: float = _f(0.05, "AdamW weight decay (not applied to biases and norm weights)")
    warmup_frac: float = _f(0.05, "linear warmup as a fraction of all steps, then cosine decay")
    min_lr_ratio: float = _f(0.01, "final learning rate as a fraction of lr")
    grad_clip: float = _f(1.0, "max global gradient norm (0 disables clipping)")
    amp: str = _f("auto", "mixed precision: auto = bf16 on CUDA devices that support it, else off",
                  ("auto", "bf16", "fp16", "off"))
    # run
    seed: int = _f(0, "seed of initialisation, data order and crops (same seed, same numbers on CPU)")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto (cuda when available)")
    log_every: int = _f(10, "steps between reads of the on-device loss sums (log, non-finite check)")
    save_every: int = _f(0, "steps between mid-epoch checkpoints (0: a checkpoint after every epoch only)")
    tensorboard: bool = _f(True, "write TensorBoard event files to split_XX/tensorboard (rank 0) when the "
                           "tensorboard package is installed")
    log_images: bool = _f(False, "record the images of every batch in split_XX/images_rankN.jsonl, N the rank "
                          "(audit of the data order)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str) -> None:
        # Temporary file, then rename: other ranks of a resumed torchrun launch read it meanwhile.
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str) -> "TrainConfig":
        with open(path) as fh:
            return cls.from_dict(json.load(fh))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def __post_init__(self):
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.validated()

    def validated(self) -> "TrainConfig":
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"config: {f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError(f"config: need 0 < crop_scale_min <= crop_scale_max <= 1, got "
                             f"{self.crop_scale_min}, {self.crop_scale_max}")
        if self.n_crops < 2:
            raise ValueError(f"config: n_crops must be >= 2 (lmc_loss needs N >= 2), got {self.n_crops}")
        if self.batch_size < 2:
            raise ValueError(f"config: batch_size must be >= 2 (lmc_loss needs B >= 2), got {self.batch_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"config: mean and std need 3 values, got {self.mean}, {self.std}")
        if not 0 < self.train_frac < 1:
            raise ValueError(f"config: train_frac must be in (0, 1), got {self.train_frac}")
        for name in ("splits", "epochs", "eval_grid", "log_every", "crop_size", "min_crop"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.save_every < 0:
            raise ValueError(f"config: save_every must be >= 0, got {self.save_every}")
        return self


# Fields that change the shapes of the model(s) or of the optimizer state (peer mode optimises two
# networks, EMA mode one). A checkpoint whose values differ is refused on resume/eval; all other fields
# (learning rate, epochs, loss weights, crops, data paths...) may change between runs.
SHAPE_FIELDS = ("arch", "embed_dim", "proj_hidden", "head_hidden", "mutual")


class ConfigMismatchError(ValueError):
    pass


def check_compatible(current: TrainConfig, saved: dict, where: str) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {getattr(current, k)!r}"
             for k in SHAPE_FIELDS if saved.get(k) != getattr(current, k)]
    if diffs:
        raise ConfigMismatchError(
            f"{where} was written by a run with another model configuration ({'; '.join(diffs)}); "
            f"refusing to load it (the fields {', '.join(SHAPE_FIELDS)} must match)"
        )


def add_config_args(parser, defaults_suppressed: bool = True) -> None:
    """Add `--<field>` for every TrainConfig field. With defaults_suppressed, unset options do not appear
    in the parsed namespace, so a resumed run can tell what the user changed."""
    import argparse

    group = parser.add_argument_group("training configuration (TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = dict(help=f"{f.metadata['help']} (default: {default})", dest=f.name)
        if defaults_suppressed:
            kw["default"] = argparse.SUPPRESS
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, tuple):
            group.add_argument(flag, type=float, nargs=len(default), metavar="V", **kw)
        else:
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            group.add_argument(flag, type=type(default), **kw)


def config_from_args(args, base: TrainConfig | None = None) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    return (base or TrainConfig()).replace(**changes)
