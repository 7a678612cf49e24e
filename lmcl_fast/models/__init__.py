"""Models: torchvision-compatible ResNet-18/50, a timm-compatible ViT-S/16, a tiny CNN for tests, and the
LMC-IQA heads."""
from .heads import ProjectionHead, QualityHead, SaliencyHead
from .iqa import ARCHS, CropOutputs, IQANet, build_backbone, build_model, load_backbone_weights
from .resnet import ResNet, resnet18, resnet50
from .tiny import TinyCNN
from .vit import VisionTransformer, vit_small_patch16

__all__ = [
    "ARCHS", "CropOutputs", "IQANet", "ProjectionHead", "QualityHead", "ResNet", "SaliencyHead", "TinyCNN",
    "VisionTransformer", "build_backbone", "build_model", "load_backbone_weights", "resnet18", "resnet50",
    "vit_small_patch16",
]
