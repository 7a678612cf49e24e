"""Models: torchvision-compatible ResNet-18/50, a tiny CNN for tests, and the LMC-IQA heads."""
from .heads import ProjectionHead, QualityHead, SaliencyHead
from .iqa import ARCHS, CropOutputs, IQANet, build_backbone, build_model, load_backbone_weights
from .resnet import ResNet, resnet18, resnet50
from .tiny import TinyCNN

__all__ = [
    "ARCHS", "CropOutputs", "IQANet", "ProjectionHead", "QualityHead", "ResNet", "SaliencyHead", "TinyCNN",
    "build_backbone", "build_model", "load_backbone_weights", "resnet18", "resnet50",
]
