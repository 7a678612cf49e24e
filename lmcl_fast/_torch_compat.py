"""The torch releases lmcl_fast supports (2.4 and newer) and the APIs that changed name within that range.

torch is deliberately not a pip dependency (an unpinned torch makes pip fetch a multi-GB CUDA build), so the
range is enforced here, at import (and by setup.py at build time), with a message instead of an obscure
symbol error. 2.4 is the floor because the ops' Python side needs `torch.library.register_fake`,
`register_autograd` and `opcheck` and `lmc_loss(group=)` needs a differentiable functional all-gather, all new
in 2.4. Every newer API is used through a feature check below, never a version comparison.
"""
from __future__ import annotations

import inspect
import math
import re

import torch
import torch.distributed as dist

MIN_TORCH = (2, 4)


def torch_version(version: str | None = None) -> tuple:
    """(major, minor) of a torch version string such as "2.13.0+cpu" or "2.11.0a0+git1234"."""
    text = torch.__version__ if version is None else version
    match = re.match(r"(\d+)\.(\d+)", str(text))
    if match is None:
        raise ImportError(f"lmcl_fast: cannot read the torch version {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_torch_version(version: str | None = None) -> None:
    """ImportError naming the installed and the required torch when it is older than MIN_TORCH."""
    text = torch.__version__ if version is None else version
    if torch_version(text) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(
            f"lmcl_fast needs torch >= {need} (torch.library.register_fake/register_autograd/opcheck and the "
            f"differentiable functional all-gather appeared in {need}); this environment has torch {text}. "
            f"Install a newer torch first (e.g. pip install torch=={need}.1 or later), then rebuild lmcl_fast."
        )


def _packable(tensors) -> bool:
    """Whether tensors can travel in one collective: one dtype, one device, the same number of rows."""
    first = tensors[0]
    return all(t.dtype == first.dtype and t.device == first.device and t.shape[0] == first.shape[0] for t in tensors)


def _pack_rows(tensors) -> torch.Tensor:
    """[rows, sum of the tensors' row sizes]: each row holds that row of every tensor, side by side."""
    rows = tensors[0].shape[0]
    if len(tensors) == 1:
        return tensors[0].reshape(rows, math.prod(tensors[0].shape[1:]))
    return torch.cat([t.reshape(rows, math.prod(t.shape[1:])) for t in tensors], dim=1)


def _unpack_rows(packed: torch.Tensor, row_shapes) -> tuple:
    """The inverse of _pack_rows: contiguous tensors of `packed`'s rows, each row shaped as in `row_shapes`."""
    parts = packed.split([math.prod(shape) for shape in row_shapes], dim=1)
    return tuple(part.contiguous().view((packed.shape[0],) + tuple(shape)) for part, shape in zip(parts, row_shapes))


def _c10d(name: str, legacy_name: str):
    """A c10d collective by its torch >= 2.13 name (`all_gather_single`, `reduce_scatter_single`), else by the name
    of 2.4 - 2.12, which 2.13 keeps with a FutureWarning at every call site."""
    collective = getattr(dist, name, None)
    return collective if collective is not None else getattr(dist, legacy_name)


class _AllGatherRows(torch.autograd.Function):
    """Eager all-gather along dim 0 of tensors packed side by side, in one c10d collective; backward: one
    sum-reduce-scatter of the gradients that are needed (a detached EMA teacher adds no bytes to it)."""

    @staticmethod
    def forward(ctx, group, *tensors):
        ctx.group = group
        ctx.row_shapes = [tuple(t.shape[1:]) for t in tensors]
        packed = _pack_rows(tensors)
        out = packed.new_empty((dist.get_world_size(group) * packed.shape[0], packed.shape[1]))
        _c10d("all_gather_single", "all_gather_into_tensor")(out, packed, group=group)
        return _unpack_rows(out, ctx.row_shapes)

    @staticmethod
    def backward(ctx, *grads):  # grads of unused outputs arrive as zeros (autograd materialises them)
        needed = [i for i, need in enumerate(ctx.needs_input_grad[1:]) if need]
        result = [None] * len(grads)
        if needed:
            packed = _pack_rows([grads[i] for i in needed])
            out = packed.new_empty((packed.shape[0] // dist.get_world_size(ctx.group), packed.shape[1]))
            _c10d("reduce_scatter_single", "reduce_scatter_tensor")(out, packed, group=ctx.group)
            for i, grad in zip(needed, _unpack_rows(out, [ctx.row_shapes[i] for i in needed])):
                result[i] = grad
        return (None, *result)


def functional_all_gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """The differentiable functional all-gather, waited for (traceable by torch.compile): torch >= 2.13 names it
    `all_gather_single` (differentiable itself); 2.4 to 2.12 have `all_gather_tensor_autograd` (2.13 keeps it
    as a deprecated alias)."""
    from torch.distributed import _functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single", None)
    if gather is None:
        gather = funcol.all_gather_tensor_autograd
    # Waited at once: with gloo, two functional all-gathers in flight together corrupt the heap (see below).
    return funcol.wait_tensor(gather(x.contiguous(), 0, group))


def all_gather_rows(tensors, group) -> tuple:
    """Differentiable all-gather of each tensor of `tensors` along dim 0 over `group`, as a tuple; the backward
    is a sum-reduce-scatter, so each rank gets the sum of every rank's gradient for its own rows. Tensors of one
    dtype, device and row count travel packed side by side in one collective (the keys and the teacher of
    `lmc_loss`: one all-gather a step instead of two); others are gathered one by one.

    Eager calls use the plain c10d collectives (`all_gather_single` and `reduce_scatter_single`, named
    `all_gather_into_tensor` and `reduce_scatter_tensor` before torch 2.13). With gloo,
    two functional all-gathers in flight at once (`all_gather_single` of the keys and of the teacher, each
    waited only when used) corrupt the heap in torch 2.13: a 2-rank loop of them and their backward died in 3
    of 3 runs of 3000 steps ("malloc(): unaligned tcache chunk detected", SIGSEGV), and it was the rare rank
    crash of the 2-rank training tests in CI; the same loop through the c10d form ran clean 6 times. Under
    torch.compile the functional form is needed (it is traceable); it is waited for at once, which ran clean
    4 times."""
    tensors = tuple(tensors)
    if not tensors:
        return ()
    if not _packable(tensors):
        return tuple(t for x in tensors for t in all_gather_rows((x,), group))
    if torch.compiler.is_compiling():
        return _unpack_rows(functional_all_gather_rows(_pack_rows(tensors), group), [t.shape[1:] for t in tensors])
    return _AllGatherRows.apply(group, *tensors)


def ddp_accepts_forward_sync_buffers(ddp_class=None) -> bool:
    """Whether DistributedDataParallel takes `forward_sync_buffers=` (torch >= 2.13, which deprecates
    `broadcast_buffers=`)."""
    if ddp_class is None:
        from torch.nn.parallel import DistributedDataParallel as ddp_class
    return "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters
