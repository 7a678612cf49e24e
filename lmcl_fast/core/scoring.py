"""From the network's per-crop outputs to an image score: the spectral-residual prior of each crop, the crop
saliency scores (prior plus learned logit) and the pooling of the crops' quality. Shared by the training
objective and the quality metric."""
from __future__ import annotations

import torch

from ..models import CropOutputs


def prior_logits(crop_sal: torch.Tensor) -> torch.Tensor:
    """Scale-free prior from the crops' mean spectral-residual saliency [B, N]: log of each crop's value
    relative to the image's mean crop value (a map's overall magnitude varies a lot between images)."""
    s = crop_sal.float().clamp_min(0)
    eps = 1e-6 * s.mean(dim=1, keepdim=True) + 1e-12
    logs = torch.log(s + eps)
    return logs - logs.mean(dim=1, keepdim=True)


def crop_scores(out: CropOutputs, prior: torch.Tensor, prior_weight: float) -> torch.Tensor:
    """Saliency score of each crop [B, N]: the spectral-residual prior plus the learned head's logit."""
    return prior_weight * prior + out.saliency.float().view_as(prior)


def image_quality(out: CropOutputs, scores: torch.Tensor, pooling: str) -> torch.Tensor:
    """Image score [B] from the crops' quality: plain mean, or weighted by softmax(saliency score)."""
    q = out.quality.float().view_as(scores)
    if pooling == "saliency":
        return (torch.softmax(scores, dim=1) * q).sum(dim=1)
    return q.mean(dim=1)
