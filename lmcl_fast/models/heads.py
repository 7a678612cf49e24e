"""Heads on the pooled backbone features of each crop."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """MLP to the contrastive embedding (D = 128 by default) that lmc_loss consumes."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ScalarHead(nn.Module):
    """MLP to one number per crop: the saliency logit or the quality score."""

    def __init__(self, in_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class SaliencyHead(ScalarHead):
    """Per-crop saliency logit, added to the spectral-residual prior to score crops."""


class QualityHead(ScalarHead):
    """Per-crop quality (regresses the normalised MOS)."""
