"""lmcl_fast: fused C++/CUDA ops and a trainer for local manifold contrastive learning (NR-IQA).

Importing the package loads the compiled library (which registers the `torch.ops.lmcl` ops) and the
Python side of each op (fake kernels for torch.compile, autograd formulas). `load_metric` reads a trained
model as a quality metric.
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

from ._torch_compat import check_torch_version

check_torch_version()  # before _C: a too-old torch fails here with a message, not with a missing symbol

from . import _C, ops  # noqa: E402, F401  (loading _C runs the TORCH_LIBRARY registrations ops builds on)
from ._C import build_info  # noqa: E402
from .core.metric import QualityMetric, load_metric  # noqa: E402

__all__ = ["ops", "build_info", "load_metric", "QualityMetric"]
__version__ = "0.1.0"
