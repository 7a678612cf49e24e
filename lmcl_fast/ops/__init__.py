"""Public API of the lmcl ops: one module per op (wrapper, fake kernel, autograd), plus the box sampler
and the default saliency map. Importing the package registers every op's Python side.

Wrappers only normalise arguments and call ``torch.ops.lmcl.<op>.default``; value checks that read
tensor data live in C++, so the wrappers stay traceable with ``torch.compile(fullgraph=True)``.
"""
from .crop_saliency import crop_saliency
from .lmc_loss import lmc_loss
from .multi_crop import multi_crop
from .saliency import spectral_residual
from .sample_boxes import sample_boxes
from .select_anchor import select_anchor

__all__ = ["multi_crop", "sample_boxes", "crop_saliency", "spectral_residual", "select_anchor", "lmc_loss"]
