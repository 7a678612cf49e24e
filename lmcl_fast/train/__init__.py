"""Training: config, mutual-learning trainer, checkpoints, K-split runs."""
from .config import SHAPE_FIELDS, ConfigMismatchError, TrainConfig
from .dist import DistContext
from .trainer import NonFiniteLossError, Trainer

__all__ = ["SHAPE_FIELDS", "ConfigMismatchError", "DistContext", "NonFiniteLossError", "TrainConfig", "Trainer"]
