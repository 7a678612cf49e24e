"""ViT-S/16 in plain PyTorch with the module names (so the state_dict keys and shapes) of timm's
`vit_small_patch16_224` and DeiT-S (`deit_small_patch16_224`), so their weight files load as they are.

Pre-norm blocks (LayerNorm eps 1e-6, multi-head attention with a fused qkv projection and bias, GELU MLP of
4x width), a class token, learned absolute position embeddings for a 14 x 14 grid (resampled bicubically for
other crop sizes, as timm does), the final LayerNorm; the feature of a crop is its class token."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [M, tokens, dim]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        M, T, C = x.shape
        q, k, v = self.qkv(x).view(M, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(M, T, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """`num_classes=None` (the IQA backbone) has no classifier `head`; a weight file's `head.*` is dropped."""

    def __init__(self, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6, grid: int = 14,
                 num_classes: int | None = None):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes is not None else None
        self.grid = grid
        self.feature_dim = dim
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False, antialias=True)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed.patch
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"VisionTransformer: crop size must be a multiple of the patch size {p}, "
                             f"got {tuple(x.shape[-2:])}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self._pos_embed(x.shape[-2] // p, x.shape[-1] // p)
        return self.norm(self.blocks(tokens))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        return feats if self.head is None else self.head(feats)


def vit_small_patch16(num_classes: int | None = None) -> VisionTransformer:
    """ViT-S/16: 384 wide, 12 blocks of 6 heads (22 M parameters without the classifier)."""
    return VisionTransformer(16, 384, 12, 6, 14, num_classes)
