"""Mutual learning between the two branches: the symmetric KL of their crop scores, and the EMA update."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """0.5 * (KL(p_a || p_b) + KL(p_b || p_a)) of the softmaxes over crops (dim 1), batch mean."""
    la = F.log_softmax(logits_a.float() / temperature, dim=1)
    lb = F.log_softmax(logits_b.float() / temperature, dim=1)
    kl_ab = (la.exp() * (la - lb)).sum(1)
    kl_ba = (lb.exp() * (lb - la)).sum(1)
    return 0.5 * (kl_ab + kl_ba).mean()


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student for parameters; buffers (BN statistics)
    are copied."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)
