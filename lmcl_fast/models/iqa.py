"""The LMC-IQA network: a backbone plus the projection, saliency and quality heads, applied per crop."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .heads import ProjectionHead, QualityHead, SaliencyHead
from .resnet import resnet18, resnet50
from .tiny import TinyCNN
from .vit import vit_small_patch16

ARCHS = ("tiny", "resnet18", "resnet50", "vit_s16")
# Classifier keys of the supported weight files (torchvision ResNet: fc; timm ViT / DeiT: head, and the
# distillation head of DeiT's distilled variant), dropped on load: the IQA model has its own heads.
_CLASSIFIER_PREFIXES = ("fc.", "head.", "head_dist.")


class CropOutputs(NamedTuple):
    z: torch.Tensor  # [M, D] contrastive embeddings
    saliency: torch.Tensor  # [M] saliency logits
    quality: torch.Tensor  # [M] quality (normalised MOS units)


class IQANet(nn.Module):
    def __init__(self, backbone: nn.Module, embed_dim: int = 128, proj_hidden: int = 512, head_hidden: int = 128):
        super().__init__()
        self.backbone = backbone
        dim = backbone.feature_dim
        self.projection = ProjectionHead(dim, proj_hidden, embed_dim)
        self.saliency = SaliencyHead(dim, head_hidden)
        self.quality = QualityHead(dim, head_hidden)

    def forward(self, crops: torch.Tensor) -> CropOutputs:
        """crops: [M, 3, S, S] (normalised) -> per-crop embeddings, saliency logits and quality."""
        f = self.backbone.forward_features(crops)
        return CropOutputs(self.projection(f), self.saliency(f), self.quality(f))


def build_backbone(arch: str) -> nn.Module:
    if arch == "tiny":
        return TinyCNN()
    if arch == "resnet18":
        return resnet18(num_classes=None)
    if arch == "resnet50":
        return resnet50(num_classes=None)
    if arch == "vit_s16":
        return vit_small_patch16(num_classes=None)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def build_model(arch: str, embed_dim: int = 128, proj_hidden: int = 512, head_hidden: int = 128) -> IQANet:
    return IQANet(build_backbone(arch), embed_dim, proj_hidden, head_hidden)


def load_backbone_weights(model: nn.Module, path: str) -> list:
    """Load a weight file into the backbone: a torchvision-format ResNet state_dict (e.g.
    resnet18-f37072fd.pth) or a timm / DeiT ViT-S/16 one (vit_small_patch16_224, deit_small_patch16_224;
    a {"model": ...} or {"state_dict": ...} wrapper is unwrapped).

    The classifier (`fc.*`, `head.*`) is dropped (the IQA model has its own heads); every other key must match
    in name and shape. `model`: an IQANet (its backbone is loaded) or a bare backbone. Returns the dropped keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    dropped = sorted(k for k in state if k.startswith(_CLASSIFIER_PREFIXES))
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    backbone = getattr(model, "backbone", model)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad:
        raise ValueError(
            f"weights: {path} does not fit the {type(backbone).__name__} backbone: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}, shape mismatch {bad[:5]}"
        )
    backbone.load_state_dict(state)
    return dropped
