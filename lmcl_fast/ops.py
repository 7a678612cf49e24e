"""Public API of the lmcl ops.

Each section holds one op: its thin wrapper (argument normalisation only, then
`torch.ops.lmcl.<op>.default`), its fake (meta) kernel for torch.compile, and its autograd formula.
Value checks that read tensor data live in C++, so the wrappers stay traceable with fullgraph=True.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (the schemas must be registered before register_fake below)

__all__: list = []

# ----------------------------------------------------------------------------------------------------
# multi_crop, sample_boxes
# ----------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------
# crop_saliency, spectral_residual, select_anchor
# ----------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------
# lmc_loss
# ----------------------------------------------------------------------------------------------------

