"""lmc_loss: the public wrapper (with the group all-gather), its fake kernels and its autograd.

The fakes mirror check_lmc_loss_args (csrc/ops/lmc_loss.cpp).
"""
from __future__ import annotations

import math

import torch

from .. import _C  # noqa: F401  (the schemas must be registered before register_fake below)
from .._torch_compat import all_gather_rows

# Registered as lmcl::lmc_loss (forward: the loss, the per-row log-sum-exp state, and, for the inputs the
# wrapper says will need a gradient, the loss's gradient w.r.t. their normalised rows for grad_loss = 1:
# O(M D), no [M, M] matrix is kept) and lmcl::_lmc_loss_backward, which scales those (or, called without
# them, recomputes the similarities tile by tile). Queries are this process's crops; keys are all crops
# (gathered across the group when there is one).


def _lmc_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lmc_check_meta(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile):
    # Mirrors check_lmc_loss_args (csrc/ops/lmc_loss.cpp) except the anchor_idx range (data).
    ok = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    torch._check(z.dim() == 3, lambda: f"lmc_loss: z must have shape [B, N, D], got {tuple(z.shape)}")
    torch._check(z_keys.dim() == 3, lambda: f"lmc_loss: z_keys must have shape [B, N, D], got {tuple(z_keys.shape)}")
    torch._check(
        teacher_keys.dim() == 3, lambda: f"lmc_loss: teacher must have shape [B, N, D], got {tuple(teacher_keys.shape)}"
    )
    torch._check_type(
        z.dtype in ok,
        lambda: f"lmc_loss: z must be float32, float16 or bfloat16 (float64 for gradcheck), got {z.dtype}",
    )
    torch._check_type(
        z_keys.dtype == z.dtype, lambda: f"lmc_loss: z_keys must have the dtype of z ({z.dtype}), got {z_keys.dtype}"
    )
    torch._check_type(
        teacher_keys.dtype == z.dtype,
        lambda: f"lmc_loss: teacher must have the dtype of z ({z.dtype}), got {teacher_keys.dtype}",
    )
    B, N, D = z.shape
    torch._check_value(
        B >= 2, lambda: f"lmc_loss: z needs B >= 2 images (the other images are the negatives), got B = {B}"
    )
    torch._check_value(N >= 2, lambda: f"lmc_loss: z needs N >= 2 crops per image, got N = {N}")
    torch._check(
        z_keys.shape[0] >= B and z_keys.shape[1] == N and z_keys.shape[2] == D,
        lambda: f"lmc_loss: z_keys must have shape [K >= B, N, D] with z's N and D {tuple(z.shape)}, "
        f"got {tuple(z_keys.shape)}",
    )
    torch._check(
        teacher_keys.shape == z_keys.shape,
        lambda: f"lmc_loss: teacher must have the shape {tuple(z_keys.shape)} of the student keys (z, or z gathered "
        f"over the group), got {tuple(teacher_keys.shape)}",
    )
    torch._check(
        z_keys.device == z.device and teacher_keys.device == z.device and anchor_idx.device == z.device,
        lambda: f"lmc_loss: z, z_keys, teacher and anchor_idx must be on one device, got z on {z.device}, "
        f"z_keys on {z_keys.device}, teacher on {teacher_keys.device}, anchor_idx on {anchor_idx.device}",
    )
    torch._check_type(
        anchor_idx.dtype == torch.int64, lambda: f"lmc_loss: anchor_idx must be int64, got {anchor_idx.dtype}"
    )
    torch._check(
        anchor_idx.dim() == 1 and anchor_idx.shape[0] == B,
        lambda: f"lmc_loss: anchor_idx must have shape [B] = [{B}], got {tuple(anchor_idx.shape)}",
    )
    torch._check_value(
        0 <= key_offset and key_offset + B <= z_keys.shape[0],
        lambda: f"lmc_loss: key_offset must place z's {B} images inside z_keys' {z_keys.shape[0]}, "
        f"got key_offset = {key_offset}",
    )
    torch._check_value(math.isfinite(tau) and tau > 0, lambda: f"lmc_loss: tau must be positive and finite, got {tau}")
    torch._check_value(
        math.isfinite(intra_weight) and intra_weight >= 0,
        lambda: f"lmc_loss: intra_weight must be finite and >= 0, got {intra_weight}",
    )
    torch._check_value(
        math.isfinite(manifold_weight), lambda: f"lmc_loss: manifold_weight must be finite, got {manifold_weight}"
    )
    torch._check_value(key_tile >= 0, lambda: f"lmc_loss: key_tile must be >= 0 (0: automatic), got {key_tile}")


@torch.library.register_fake("lmcl::lmc_loss")
def _lmc_loss_fake(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile=0,
                   need_grad_z=False, need_grad_z_keys=False, need_grad_teacher_keys=False):
    _lmc_check_meta(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile)
    B, N, D = z.shape
    Mk = z_keys.shape[0] * N
    acc = _lmc_acc_dtype(z.dtype)
    return (
        z.new_empty((), dtype=acc),
        z.new_empty((B,), dtype=acc),
        z.new_empty((B, N), dtype=acc),
        z.new_empty((B * N,), dtype=acc),
        z.new_empty((B * N if need_grad_z else 0, D), dtype=acc),
        z.new_empty((B if need_grad_z else 0, D), dtype=acc),
        z.new_empty((Mk if need_grad_z_keys else 0, D), dtype=acc),
        z.new_empty((Mk if need_grad_teacher_keys else 0, D), dtype=acc),
    )


@torch.library.register_fake("lmcl::_lmc_loss_backward")
def _lmc_loss_backward_fake(grad, z, anchor_idx, z_keys, teacher_keys, cluster_lse, cluster_logits, manifold_lse,
                            key_offset, tau, intra_weight, manifold_weight, need_grad_z, need_grad_z_keys,
                            need_grad_teacher_keys, key_tile=0, unit_grad_q=None, unit_grad_anchors=None,
                            unit_grad_z_keys=None, unit_grad_teacher_keys=None):
    _lmc_check_meta(z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile)
    return z.new_empty(z.shape), z_keys.new_empty(z_keys.shape), teacher_keys.new_empty(teacher_keys.shape)


def _save_row_state(ctx, z, anchor_idx, z_keys, teacher_keys, loss_args, key_tile, state):
    # O(B*N*D) inputs and unit gradients, O(B*N) row state: no similarity matrix is kept.
    ctx.save_for_backward(z, anchor_idx, z_keys, teacher_keys, *state)
    ctx.lmc_args = loss_args
    ctx.lmc_key_tile = key_tile


def _input_grads(ctx, grad_loss, need_z, need_z_keys, need_teacher_keys):
    """(grad_z, grad_z_keys, grad_teacher_keys) from what _save_row_state kept."""
    z, anchor_idx, z_keys, teacher_keys, *row_state = ctx.saved_tensors
    return torch.ops.lmcl._lmc_loss_backward.default(
        grad_loss, z, anchor_idx, z_keys, teacher_keys, *row_state[:3], *ctx.lmc_args, need_z, need_z_keys,
        need_teacher_keys, ctx.lmc_key_tile, *row_state[3:]
    )


def _lmc_loss_setup_context(ctx, inputs, output):
    z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight, key_tile = inputs[:9]
    _, *state = output
    ctx.mark_non_differentiable(*state)
    _save_row_state(ctx, z, anchor_idx, z_keys, teacher_keys, (key_offset, tau, intra_weight, manifold_weight),
                    key_tile, state)


def _lmc_loss_backward(ctx, grad_loss, *_state_grads):
    needs = ctx.needs_input_grad
    grad_z, grad_z_keys, grad_teacher_keys = _input_grads(ctx, grad_loss, needs[0], needs[2], needs[3])
    return grad_z, None, grad_z_keys, grad_teacher_keys, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "lmcl::lmc_loss", _lmc_loss_backward, setup_context=_lmc_loss_setup_context
)


def _lmc_loss_double_backward(ctx, *grads):
    raise RuntimeError("lmc_loss: double backward is not supported (the backward scales gradients the forward "
                       "computed, or recomputes them tile by tile, and has no derivative of its own)")


torch.library.register_autograd(
    "lmcl::_lmc_loss_backward", _lmc_loss_double_backward, setup_context=lambda ctx, inputs, output: None
)


def _grad_needs(z, z_keys, teacher_keys):
    """Which of the op's embedding inputs autograd will differentiate: the forward then computes their
    gradients while the similarities are at hand (one GEMM fewer per step)."""
    grad_on = torch.is_grad_enabled()
    return tuple(grad_on and t.requires_grad for t in (z, z_keys, teacher_keys))


class _LmcLossFunction(torch.autograd.Function):
    """The eager wrapper's autograd: the same two ops and saved state as lmcl::lmc_loss's registered autograd
    (which torch.compile and direct callers of the op use), entered without its Python dispatch layer: at
    M = 512 a training step is about 5% faster (bench/RESULTS.md)."""

    @staticmethod
    def forward(ctx, z, anchor_idx, z_keys, teacher_keys, key_offset, tau, intra_weight, manifold_weight):
        needs = ctx.needs_input_grad
        with torch._C._AutoDispatchBelowAutograd():  # straight to the backend kernel
            loss, *state = torch.ops.lmcl.lmc_loss.default(z, anchor_idx, z_keys, teacher_keys, key_offset, tau,
                                                           intra_weight, manifold_weight, 0, needs[0], needs[2],
                                                           needs[3])
        _save_row_state(ctx, z, anchor_idx, z_keys, teacher_keys, (key_offset, tau, intra_weight, manifold_weight),
                        0, state)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        needs = ctx.needs_input_grad
        grad_z, grad_z_keys, grad_teacher_keys = _input_grads(ctx, grad_loss, needs[0], needs[2], needs[3])
        return grad_z, None, grad_z_keys, grad_teacher_keys, None, None, None, None


def _loss(z, anchor_idx, z_keys, teacher_keys, key_offset, args):
    # Traced (torch.compile) through the op's registered fake and autograd; under no_grad nothing is saved.
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return torch.ops.lmcl.lmc_loss.default(z, anchor_idx, z_keys, teacher_keys, key_offset, *args, 0,
                                               *_grad_needs(z, z_keys, teacher_keys))[0]
    return _LmcLossFunction.apply(z, anchor_idx, z_keys, teacher_keys, key_offset, *args)


def lmc_loss(z, anchor_idx, teacher=None, tau=0.1, intra_weight=0.5, manifold_weight=1.0, group=None):
    """Local manifold contrastive loss (SPEC §1.4): cluster term + manifold_weight * manifold term.

    z: student crop embeddings [B, N, D] (float32/bf16/fp16; float64 computes in float64, for gradcheck);
    anchor_idx: int64 [B]; teacher: [B, N, D] or None (then exactly ``lmc_loss(z, anchor_idx, teacher=z)``,
    gradients flowing through both roles). Returns a float32 scalar (float64 for float64 inputs).
    group: a torch.distributed process group; keys are all-gathered so negatives span the global batch,
    and each rank returns the loss of its own queries (normalised by its own B).
    """
    teacher_in = z if teacher is None else teacher
    args = (float(tau), float(intra_weight), float(manifold_weight))
    if group is None:
        return _loss(z, anchor_idx, z, teacher_in, 0, args)
    import torch.distributed as dist

    if not torch.compiler.is_compiling() and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"lmc_loss: group must be a torch.distributed ProcessGroup (e.g. dist.group.WORLD after "
                        f"init_process_group) or None, got {type(group).__name__} {group!r}")
    # A differentiable all-gather (its backward sums every rank's key gradients onto the owners' rows); the keys
    # and the teacher travel together in one collective.
    if teacher is None:
        (z_keys,) = all_gather_rows((z,), group)
        teacher_keys = z_keys
    else:
        z_keys, teacher_keys = all_gather_rows((z, teacher_in), group)
    key_offset = dist.get_rank(group) * z.shape[0]
    return _loss(z, anchor_idx, z_keys, teacher_keys, key_offset, args)
