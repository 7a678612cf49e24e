"""lmcl_fast: fused C++/CUDA ops and a trainer for local manifold contrastive learning (NR-IQA).

Importing the package loads the compiled library (which registers the `torch.ops.lmcl` ops) and the
Python side of each op (fake kernels for torch.compile, autograd formulas). `load_metric` reads a trained
model as a quality metric.
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _C, ops  # noqa: F401  (loading _C runs the TORCH_LIBRARY registrations ops builds on)
from ._C import build_info
from .core.metric import QualityMetric, load_metric

__all__ = ["ops", "build_info", "load_metric", "QualityMetric"]
__version__ = "0.1.0"
