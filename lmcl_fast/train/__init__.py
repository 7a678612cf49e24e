"""Training: the mutual-learning trainer of one split, its objective and schedule (the config, checkpoints and
distributed context live in lmcl_fast.core; the K-split driver in lmcl_fast.experiment)."""
from ..core.config import SHAPE_FIELDS, ConfigMismatchError, TrainConfig
from ..core.dist import DistContext
from .trainer import CheckpointWriteError, NonFiniteLossError, Trainer

__all__ = ["SHAPE_FIELDS", "CheckpointWriteError", "ConfigMismatchError", "DistContext", "NonFiniteLossError",
           "TrainConfig", "Trainer"]
