"""The supported torch range (>= 2.4) and both branches of every feature check, run on this machine's torch by
hiding the newer API (lmcl_fast/_torch_compat.py)."""
import inspect

import pytest
import torch

from lmcl_fast import _torch_compat
from lmcl_fast.core import dist as dist_mod
from lmcl_fast.core.dist import DistContext


@pytest.mark.parametrize("version, parsed", [("2.13.0+cpu", (2, 13)), ("2.4.0", (2, 4)),
                                             ("2.11.0a0+git1234abc", (2, 11)), ("10.1", (10, 1))])
def test_torch_version_parses_release_and_local_builds(version, parsed):
    assert _torch_compat.torch_version(version) == parsed


@pytest.mark.parametrize("version", ["2.4.0", "2.4.1+cu121", "2.11.0+cu130", "2.13.0+cpu", "3.0.0"])
def test_supported_versions_pass(version):
    _torch_compat.check_torch_version(version)


@pytest.mark.parametrize("version", ["2.3.1", "1.13.1+cu117", "2.0.0"])
def test_older_torch_is_refused_with_both_versions_named(version):
    with pytest.raises(ImportError, match=rf"torch >= 2\.4.*torch {version.replace('+', '[+]')}"):
        _torch_compat.check_torch_version(version)


def test_this_torch_is_in_range():
    assert _torch_compat.torch_version() >= _torch_compat.MIN_TORCH


def _recorder(calls, name):
    def gather(x, dim, group, tag=""):
        calls.append(name)
        return torch.cat([x, x], dim)
    return gather


def test_all_gather_prefers_all_gather_single(monkeypatch):
    from torch.distributed import _functional_collectives as funcol

    calls = []
    monkeypatch.setattr(funcol, "all_gather_single", _recorder(calls, "single"), raising=False)
    monkeypatch.setattr(funcol, "all_gather_tensor_autograd", _recorder(calls, "legacy"), raising=False)
    out = _torch_compat.functional_all_gather_rows(torch.ones(2, 3).t(), group=None)  # non-contiguous input
    assert calls == ["single"] and out.shape == (6, 2)


def test_all_gather_falls_back_to_all_gather_tensor_autograd(monkeypatch):
    """torch 2.4 - 2.12 have no all_gather_single (the 2-process gloo run of this branch is in
    test_lmc_loss_distributed.py, case teacher-none-legacy-gather)."""
    from torch.distributed import _functional_collectives as funcol

    calls = []
    monkeypatch.delattr(funcol, "all_gather_single", raising=False)
    monkeypatch.setattr(funcol, "all_gather_tensor_autograd", _recorder(calls, "legacy"), raising=False)
    assert _torch_compat.functional_all_gather_rows(torch.ones(2, 3), group=None).shape == (4, 3)
    assert calls == ["legacy"]


class _TwoRankCollectives:
    """c10d's all-gather and reduce-scatter (under the names of torch >= 2.13 or of 2.4 - 2.12) for a pretend world
    of 2 whose other rank holds this rank's data + 100 (so the gathered rows show which rank they came from);
    calls are recorded."""

    def __init__(self, monkeypatch, legacy_names=False):
        self.calls = []
        dist = _torch_compat.dist
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        if legacy_names:  # torch 2.4 - 2.12: all_gather_into_tensor and reduce_scatter_tensor only
            monkeypatch.delattr(dist, "all_gather_single", raising=False)
            monkeypatch.delattr(dist, "reduce_scatter_single", raising=False)
            monkeypatch.setattr(dist, "all_gather_into_tensor", self.all_gather, raising=False)
            monkeypatch.setattr(dist, "reduce_scatter_tensor", self.reduce_scatter, raising=False)
        else:  # torch >= 2.13, whose old names warn: they must not be called
            monkeypatch.setattr(dist, "all_gather_single", self.all_gather, raising=False)
            monkeypatch.setattr(dist, "reduce_scatter_single", self.reduce_scatter, raising=False)
            monkeypatch.setattr(dist, "all_gather_into_tensor", None, raising=False)
            monkeypatch.setattr(dist, "reduce_scatter_tensor", None, raising=False)

    def all_gather(self, out, x, group=None):
        self.calls.append(("all_gather", x.dtype, tuple(x.shape)))
        out.copy_(torch.cat([x, x + 100]))

    def reduce_scatter(self, out, x, group=None):  # both ranks send the same gradient: 2x this rank's rows
        self.calls.append(("reduce_scatter", x.dtype, tuple(x.shape)))
        out.copy_(2 * x[: out.shape[0]])


@pytest.mark.parametrize("legacy_names", [False, True], ids=["torch>=2.13-names", "torch<2.13-names"])
def test_all_gather_rows_packs_tensors_of_one_dtype_into_one_collective(monkeypatch, legacy_names):
    collectives = _TwoRankCollectives(monkeypatch, legacy_names)
    keys = torch.randn(3, 4, 5, requires_grad=True)
    teacher = torch.randn(3, 2)  # detached, as an EMA teacher: no gradient is sent back for it
    gathered_keys, gathered_teacher = _torch_compat.all_gather_rows((keys, teacher), group=None)
    assert torch.equal(gathered_keys, torch.cat([keys, keys + 100]).detach())
    assert torch.equal(gathered_teacher, torch.cat([teacher, teacher + 100]))
    assert gathered_keys.is_contiguous() and gathered_teacher.is_contiguous()
    weight = torch.randn(6, 4, 5)
    (gathered_keys * weight).sum().backward()
    torch.testing.assert_close(keys.grad, 2 * weight[:3])
    assert collectives.calls == [("all_gather", torch.float32, (3, 22)), ("reduce_scatter", torch.float32, (6, 20))]


def test_all_gather_rows_gathers_mixed_dtypes_one_by_one(monkeypatch):
    collectives = _TwoRankCollectives(monkeypatch)
    a, b = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64)
    gathered_a, gathered_b = _torch_compat.all_gather_rows((a, b), group=None)
    assert gathered_a.dtype == torch.float32 and gathered_b.dtype == torch.float64
    assert torch.equal(gathered_b, torch.cat([b, b + 100]))
    assert [call[:2] for call in collectives.calls] == [("all_gather", torch.float32), ("all_gather", torch.float64)]


class _NewDDP:
    """DistributedDataParallel's constructor as torch >= 2.13 has it (forward_sync_buffers=)."""
    def __init__(self, module, device_ids=None, broadcast_buffers=None, process_group=None,
                 forward_sync_buffers=None):
        self.kwargs = dict(device_ids=device_ids, broadcast_buffers=broadcast_buffers, process_group=process_group,
                           forward_sync_buffers=forward_sync_buffers)


class _OldDDP:
    """... and as torch 2.4 - 2.12 have it (broadcast_buffers= only)."""
    def __init__(self, module, device_ids=None, broadcast_buffers=True, process_group=None):
        self.kwargs = dict(device_ids=device_ids, broadcast_buffers=broadcast_buffers, process_group=process_group)


def test_the_real_ddp_signature_is_detected():
    from torch.nn.parallel import DistributedDataParallel

    has = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    assert _torch_compat.ddp_accepts_forward_sync_buffers() == has
    assert _torch_compat.ddp_accepts_forward_sync_buffers(_NewDDP)
    assert not _torch_compat.ddp_accepts_forward_sync_buffers(_OldDDP)


@pytest.mark.parametrize("ddp_class", [_NewDDP, _OldDDP], ids=["torch>=2.13", "torch<2.13"])
@pytest.mark.parametrize("forward_sync", [True, False])
def test_wrap_ddp_keeps_the_init_sync_on_every_release(monkeypatch, ddp_class, forward_sync):
    import torch.nn.parallel

    broadcasts = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp_class)
    monkeypatch.setattr(dist_mod, "broadcast_buffers_", lambda module, dist: broadcasts.append(module))
    module = torch.nn.BatchNorm1d(3)
    ctx = DistContext(rank=0, world_size=2, group="G")
    ddp = dist_mod.wrap_ddp(module, ctx, torch.device("cpu"), forward_sync_buffers=forward_sync)
    kw = ddp.kwargs
    assert kw["process_group"] == "G" and kw["device_ids"] is None
    if forward_sync:  # every release's default: init and forward sync, no extra argument
        assert kw.get("forward_sync_buffers") is None and kw["broadcast_buffers"] in (None, True) and not broadcasts
    elif ddp_class is _NewDDP:
        assert kw["forward_sync_buffers"] is False and kw["broadcast_buffers"] is None and not broadcasts
    else:  # broadcast_buffers=False skips the init sync of buffers: wrap_ddp does it itself
        assert kw["broadcast_buffers"] is False and broadcasts == [module]
