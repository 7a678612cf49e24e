"""IQA data: CSV datasets, content-aware splits, the synthetic generator, padded batching and the Pillow / DALI
loaders."""
from .collate import collate_padded, pad_images
from .crops import random_crops
from .dataset import ImageTooLarge, IQADataset, SkippedItem, check_image_bytes, decode_image
from .loader import dali_available, make_loader
from .splits import random_splits
from .synthetic import make_synthetic, synthetic_mos

__all__ = ["IQADataset", "ImageTooLarge", "SkippedItem", "check_image_bytes", "decode_image", "collate_padded",
           "pad_images", "make_loader", "dali_available", "random_splits", "make_synthetic", "synthetic_mos",
           "random_crops"]
