"""A tiny CNN backbone for tests and quick CPU runs (four stride-2 conv-BN-ReLU stages, global pool)."""
from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, widths: tuple = (16, 32, 64, 128)):
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
