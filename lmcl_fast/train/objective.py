"""The training objective of one step, given both branches' per-crop outputs:

    SmoothL1(quality, normalised MOS) + lambda_lmc * lmc_loss + lambda_mutual * symmetric KL

Peer mode: both branches are trained; each branch's embeddings are the queries of one lmc_loss with the
other (detached) branch as teacher, and the quality terms are averaged. EMA mode: only the student
(branch a) is trained; the teacher's outputs arrive without gradients. No second branch (mutual "none",
`out_b` None): the network's own detached embeddings are the teacher and the KL term is zero."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import ops
from ..core.config import TrainConfig
from ..core.scoring import crop_scores, image_quality
from ..models import CropOutputs
from .mutual import symmetric_kl


class LossTerms(NamedTuple):
    total: torch.Tensor
    quality: torch.Tensor
    lmc: torch.Tensor
    kl: torch.Tensor


def compute_losses(cfg: TrainConfig, out_a: CropOutputs, out_b: CropOutputs | None, prior: torch.Tensor,
                   target: torch.Tensor, group=None) -> LossTerms:
    B, N = prior.shape
    peer = cfg.mutual == "peer"
    score_a = crop_scores(out_a, prior, cfg.prior_weight)
    if out_b is None:
        out_b, score_b, kl = out_a, score_a, score_a.new_zeros(())
    else:
        score_b = crop_scores(out_b, prior, cfg.prior_weight)
        kl = symmetric_kl(score_a, score_b, cfg.kl_temperature)
    if cfg.anchor == "random":
        anchor = torch.randint(0, N, (B,), device=prior.device)
    else:
        anchor = ops.select_anchor((0.5 * (score_a + score_b)).detach())

    z_a = out_a.z.view(B, N, -1)
    z_b = out_b.z.view(B, N, -1)
    lmc_kw = dict(tau=cfg.tau, intra_weight=cfg.intra_weight, manifold_weight=cfg.manifold_weight, group=group)
    quality_a = F.smooth_l1_loss(image_quality(out_a, score_a, cfg.pooling), target, beta=cfg.smoothl1_beta)
    if peer:
        lmc_a = ops.lmc_loss(z_a, anchor, z_b.detach(), **lmc_kw)
        lmc = 0.5 * (lmc_a + ops.lmc_loss(z_b, anchor, z_a.detach(), **lmc_kw))
        quality_b = F.smooth_l1_loss(image_quality(out_b, score_b, cfg.pooling), target, beta=cfg.smoothl1_beta)
        quality = 0.5 * (quality_a + quality_b)
    else:
        lmc = ops.lmc_loss(z_a, anchor, z_b.detach(), **lmc_kw)
        quality = quality_a
    total = quality + cfg.lambda_lmc * lmc + cfg.lambda_mutual * kl
    return LossTerms(total, quality, lmc.float(), kl)
