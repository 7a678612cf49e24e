"""lmc_loss (SPEC §1.4) against a float64 eager reference: values, gradients, dtypes, tiles, checks."""
import random

import pytest
import torch
import torch.nn.functional as F

import lmcl_fast  # noqa: F401  (registers torch.ops.lmcl)
from lmcl_fast.ops import lmc_loss
from lmcl_testing import DEVICES, LOWP_ERROR_FACTOR, TOLERANCES


def reference_lmc_loss(z, anchor_idx, teacher=None, tau=0.1, intra_weight=0.5, manifold_weight=1.0,
                       dtype=torch.float64):
    """SPEC §1.4 written out with the full [M, M] similarity matrices and masks, computed in `dtype`."""
    z = z.to(dtype)
    t = z if teacher is None else teacher.to(dtype)
    B, N, D = z.shape
    q = F.normalize(z, dim=-1, eps=1e-12).reshape(B * N, D)
    k = F.normalize(t, dim=-1, eps=1e-12).reshape(B * N, D)
    img = torch.arange(B, device=z.device).repeat_interleave(N)
    crop = torch.arange(N, device=z.device).repeat(B)
    same = img[:, None] == img[None, :]
    pos = same & (crop[:, None] == crop[None, :])
    # Manifold: positive weight 1, intra-class negatives intra_weight, inter-class negatives 1.
    sim = q @ k.T / tau
    weight = torch.where(pos | ~same, 1.0, intra_weight).to(dtype)
    lse = torch.logsumexp(sim + torch.log(weight), dim=1)
    l_man = (lse - sim[pos]).mean()
    # Cluster: the anchor of image i against its own crops k != s_i, negatives all crops of other images.
    anchors = q.reshape(B, N, D)[torch.arange(B), anchor_idx]
    sim_c = anchors @ q.T / tau
    own = img[None, :] == torch.arange(B, device=z.device)[:, None]
    neg = torch.logsumexp(sim_c.masked_fill(own, float("-inf")), dim=1)
    p = sim_c.reshape(B, B, N)[torch.arange(B), torch.arange(B)]
    terms = torch.logaddexp(p, neg[:, None]) - p
    keep = torch.ones(B, N, dtype=torch.bool, device=z.device)
    keep[torch.arange(B), anchor_idx] = False
    l_clu = terms[keep].sum() / (B * (N - 1))
    return l_clu + manifold_weight * l_man


def _case(B, N, D, tau=0.1, intra_weight=0.5, manifold_weight=1.0, teacher=True, anchor="random", strided=False,
          device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, N, 2 * D) if strided else (B, N, D)
    z = torch.randn(shape, generator=g)
    t = torch.randn(shape, generator=g) if teacher else None
    if strided:  # every other feature: a non-contiguous view
        z = z[..., ::2]
        t = t[..., ::2] if teacher else None
    if anchor == "first":
        a = torch.zeros(B, dtype=torch.int64)
    elif anchor == "last":
        a = torch.full((B,), N - 1, dtype=torch.int64)
    elif anchor == "middle":
        a = torch.full((B,), N // 2, dtype=torch.int64)
    else:
        a = torch.randint(0, N, (B,), generator=g)
    z = z.to(device=device, dtype=dtype)
    t = t.to(device=device, dtype=dtype) if teacher else None
    return dict(z=z, anchor_idx=a.to(device), teacher=t, tau=tau, intra_weight=intra_weight,
                manifold_weight=manifold_weight)


def assert_grad_close(g, ref):
    """TOLERANCES[("lmc_loss_grad", float32)]: atol scales with the largest reference entry."""
    tol = TOLERANCES[("lmc_loss_grad", torch.float32)]
    atol = tol["atol_per_max"] * max(ref.abs().max().item(), 1.0)
    torch.testing.assert_close(g.double(), ref.double(), rtol=tol["rtol"], atol=atol)


def sample_inputs(device, dtype=torch.float32):
    rng = random.Random(1234)
    cases = [
        _case(2, 2, 3, device=device, dtype=dtype),  # smallest legal batch
        _case(4, 3, 8, tau=0.01, device=device, dtype=dtype),  # SPEC: stable down to tau = 0.01
        _case(3, 5, 16, teacher=False, anchor="first", device=device, dtype=dtype),
        _case(5, 4, 7, intra_weight=0.0, anchor="last", device=device, dtype=dtype),
        _case(6, 3, 12, intra_weight=1.0, manifold_weight=0.3, anchor="middle", strided=True, device=device,
              dtype=dtype),
        _case(4, 4, 8, teacher=False, strided=True, device=device, dtype=dtype),
    ]
    # Random B, N, D, tau in [0.05, 0.5], intra_weight in [0, 1]. D >= 2: at D = 1 the exact gradient
    # is 0 (every crop normalises to +-1) and float32 only leaves rounding noise there.
    for seed in range(4):
        cases.append(_case(rng.randint(2, 9), rng.randint(2, 6), rng.randint(2, 33), tau=rng.uniform(0.05, 0.5),
                           intra_weight=rng.uniform(0.0, 1.0), manifold_weight=rng.uniform(0.0, 2.0),
                           teacher=bool(seed % 2), device=device, dtype=dtype, seed=seed + 10))
    return cases


def _ids(cases):
    return [f"B{c['z'].shape[0]}N{c['z'].shape[1]}D{c['z'].shape[2]}-tau{c['tau']:.2g}"
            f"-{'t' if c['teacher'] is not None else 'self'}" for c in cases]


def _value_and_grads(fn, case, leaf_dtype=None):
    """fn's value and its gradients w.r.t. fresh leaves of z (and teacher), cast to leaf_dtype if given
    (the float64 reference differentiates float64 leaves, so its gradients are not rounded)."""
    dtype = leaf_dtype or case["z"].dtype
    z = case["z"].detach().to(dtype).requires_grad_(True)
    t = case["teacher"].detach().to(dtype).requires_grad_(True) if case["teacher"] is not None else None
    kwargs = {k: case[k] for k in ("tau", "intra_weight", "manifold_weight")}
    out = fn(z, case["anchor_idx"], t, **kwargs)
    grads = torch.autograd.grad(out, [z] if t is None else [z, t])
    return out, grads


CPU_CASES = sample_inputs("cpu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(CPU_CASES)), ids=_ids(CPU_CASES))
def test_matches_float64_reference(device, index):
    case = sample_inputs(device)[index]
    out, grads = _value_and_grads(lmc_loss, case)
    ref, ref_grads = _value_and_grads(reference_lmc_loss, case, torch.float64)
    assert out.dtype == torch.float32 and out.dim() == 0
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    torch.testing.assert_close(out.double(), ref, **tol)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == torch.float32 and g.shape == rg.shape
        assert_grad_close(g, rg)


def test_teacher_none_is_teacher_equal_z_with_both_gradients():
    case = _case(4, 3, 8, teacher=False)
    z1 = case["z"].clone().requires_grad_(True)
    out1 = lmc_loss(z1, case["anchor_idx"])
    out1.backward()
    z2 = case["z"].clone().requires_grad_(True)
    t2 = case["z"].clone().requires_grad_(True)
    out2 = lmc_loss(z2, case["anchor_idx"], teacher=t2)
    out2.backward()
    assert torch.equal(out1, out2)
    assert_grad_close(z1.grad, z2.grad + t2.grad)
    assert t2.grad.abs().max() > 0  # the teacher role really carries gradient


def test_detached_teacher_gets_no_gradient_work():
    # An EMA teacher does not require grad: z's gradient is unchanged and the backward op, told so by
    # need_grad_teacher_keys, skips the teacher's GEMMs and returns zeros there.
    case = _case(4, 3, 8, tau=0.1)
    z = case["z"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lmc_loss(z, case["anchor_idx"], case["teacher"]), z)
    _, ref_grads = _value_and_grads(reference_lmc_loss, case, torch.float64)
    assert_grad_close(g, ref_grads[0])
    args = (case["z"], case["anchor_idx"], case["z"], case["teacher"], 0, 0.1, 0.5, 1.0)
    state = torch.ops.lmcl.lmc_loss(*args)[1:4]
    full = torch.ops.lmcl._lmc_loss_backward(torch.tensor(1.0), *args[:4], *state, *args[4:], True, True, True)
    part = torch.ops.lmcl._lmc_loss_backward(torch.tensor(1.0), *args[:4], *state, *args[4:], True, True, False)
    assert torch.equal(part[0], full[0]) and torch.equal(part[1], full[1])
    assert torch.equal(part[2], torch.zeros_like(full[2])) and full[2].abs().max() > 0


@pytest.mark.parametrize("key_tile", [0, 5, 64])
@pytest.mark.parametrize("needs", [(True, True, True), (True, True, False), (False, False, True)])
def test_forward_unit_gradients_equal_the_recomputed_backward(key_tile, needs):
    # The forward's unit gradients (the CPU's row strips: one per thread at key_tile 0/64, one image each at 5)
    # give the backward the same gradients as the tile loop's recomputation they replace, for any grad_loss.
    case = _case(4, 3, 8, tau=0.07, intra_weight=0.3)
    args = (case["z"], case["anchor_idx"], case["z"], case["teacher"], 0, 0.07, 0.3, 0.8, key_tile)
    out = torch.ops.lmcl.lmc_loss(*args, *needs)
    plain = torch.ops.lmcl.lmc_loss(*args)
    for x, y in zip(out[:4], plain[:4]):
        assert torch.equal(x, y)
    rows = (12, 4, 12, 12)
    for unit, need, n in zip(out[4:], (needs[0], needs[0], needs[1], needs[2]), rows):
        assert unit.shape == ((n if need else 0), 8) and unit.dtype == torch.float32
    assert all(u.shape[0] == 0 for u in plain[4:])
    grad = torch.tensor(-1.7)
    saved = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *out[1:4], *args[4:8], *needs, key_tile, *out[4:])
    recomputed = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *out[1:4], *args[4:8], *needs, key_tile)
    for x, y in zip(saved, recomputed):  # equal up to float32 summation order
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    if all(needs):
        return
    # Unit gradients that miss a needed part are ignored: the backward recomputes.
    partial = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *out[1:4], *args[4:8], True, True, True, key_tile,
                                                *out[4:])
    full = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *out[1:4], *args[4:8], True, True, True, key_tile)
    for x, y in zip(partial, full):
        assert torch.equal(x, y)


def test_backward_twice_with_retain_graph_gives_the_same_gradients():
    # The saved unit gradients are read, never overwritten, by the backward.
    case = _case(4, 3, 8)
    z = case["z"].clone().requires_grad_(True)
    t = case["teacher"].clone().requires_grad_(True)
    loss = lmc_loss(z, case["anchor_idx"], t)
    first = torch.autograd.grad(loss, [z, t], retain_graph=True)
    second = torch.autograd.grad(loss, [z, t])
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_unit_gradients_are_asked_for_only_when_autograd_needs_them(monkeypatch):
    case = _case(3, 2, 4)
    z = case["z"].clone().requires_grad_(True)
    calls = []
    op = torch.ops.lmcl.lmc_loss.default

    def spy(*args):
        calls.append(args[9:])
        return op(*args)

    monkeypatch.setattr(torch.ops.lmcl.lmc_loss, "default", spy)
    lmc_loss(z, case["anchor_idx"], case["teacher"])
    with torch.no_grad():
        lmc_loss(z, case["anchor_idx"], case["teacher"])
    lmc_loss(case["z"], case["anchor_idx"], z)
    assert calls == [(True, True, False), (False, False, False), (False, False, True)]


def test_bad_unit_gradient_is_named():
    case = _case(3, 2, 4)
    args = (case["z"], case["anchor_idx"], case["z"], case["teacher"], 0, 0.1, 0.5, 1.0)
    out = torch.ops.lmcl.lmc_loss(*args, 0, True, True, True)
    with pytest.raises(RuntimeError, match="unit_grad_z_keys must be Float"):
        torch.ops.lmcl._lmc_loss_backward(torch.tensor(1.0), *args[:4], *out[1:4], *args[4:], True, True, True, 0,
                                          out[4], out[5], out[6][:5], out[7])


@pytest.mark.parametrize("key_tile", [1, 5, 7, 64])
def test_key_tiles_that_split_images_match_reference(key_tile):
    # Tiles narrower than N and not aligned to image boundaries: the recomputing backward's tile loop (the
    # online LSE merge runs in the grid runner's forward, test_grid_runner_matches_cpu_op); the CPU forward
    # runs row strips of one image.
    case = _case(5, 6, 10, tau=0.05, intra_weight=0.2)
    z = case["z"].clone().requires_grad_(True)
    t = case["teacher"].clone().requires_grad_(True)
    out = torch.ops.lmcl.lmc_loss(z, case["anchor_idx"], z, t, 0, 0.05, 0.2, 1.0, key_tile)[0]
    grads = torch.autograd.grad(out, [z, t])
    ref, ref_grads = _value_and_grads(reference_lmc_loss, case, torch.float64)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    torch.testing.assert_close(out.double(), ref, **tol)
    for g, rg in zip(grads, ref_grads):
        assert_grad_close(g, rg)


@pytest.mark.parametrize("threads", [1, 2])
def test_strips_wider_than_one_similarity_gemm_match_reference(threads):
    # B = 160, N = 8: each worker's strip of up to 1280 rows against 1280 keys computes its similarities in
    # several GEMMs of key blocks (host/lmc_loss.h, strip_similarities), the last one narrower.
    case = _case(160, 8, 8, tau=0.07)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        value, grads = _value_and_grads(lmc_loss, case)
    finally:
        torch.set_num_threads(previous)
    ref, ref_grads = _value_and_grads(reference_lmc_loss, case, torch.float64)
    torch.testing.assert_close(value.double(), ref, **TOLERANCES[("lmc_loss", torch.float32)])
    for g, rg in zip(grads, ref_grads):
        assert_grad_close(g, rg)


def test_keys_beyond_the_local_batch_are_negatives():
    # What a rank computes under group=: its queries against the gathered keys, located by key_offset.
    # The loss of images 2..3 among keys 0..5 equals the loss on all 6 images restricted to those rows;
    # check it through the mean over the three "ranks".
    case = _case(6, 3, 8, tau=0.2)
    z, t, a = case["z"], case["teacher"], case["anchor_idx"]
    parts = [torch.ops.lmcl.lmc_loss(z[r * 2:(r + 1) * 2], a[r * 2:(r + 1) * 2], z, t, r * 2, 0.2, 0.5, 1.0)[0]
             for r in range(3)]
    ref = reference_lmc_loss(z, a, t, tau=0.2)
    torch.testing.assert_close(torch.stack(parts).mean().double(), ref, **TOLERANCES[("lmc_loss", torch.float32)])


def test_gradcheck_float64():
    case = _case(3, 2, 4, tau=0.3, dtype=torch.float64)
    z = case["z"].clone().requires_grad_(True)
    t = case["teacher"].clone().requires_grad_(True)
    a = case["anchor_idx"]
    assert torch.autograd.gradcheck(lambda z_, t_: lmc_loss(z_, a, t_, tau=0.3), (z, t))
    zs = _case(3, 3, 4, dtype=torch.float64, seed=3)["z"].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z_: lmc_loss(z_, a, tau=0.3, intra_weight=0.7), (zs,))


def test_double_backward_raises():
    case = _case(3, 2, 4)
    z = case["z"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lmc_loss(z, case["anchor_idx"]), z, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for i, case in enumerate(sample_inputs(device)[:6]):
        z = case["z"].clone().requires_grad_(True)
        # One case with a teacher that needs no gradient (output_mask of the backward).
        t = z if case["teacher"] is None else case["teacher"].clone().requires_grad_(i != 1)
        args = (z, case["anchor_idx"], z, t, 0, case["tau"], case["intra_weight"], case["manifold_weight"], 0)
        torch.library.opcheck(torch.ops.lmcl.lmc_loss.default, args)
        # As the wrapper calls it: the forward also returns the unit gradients autograd will use.
        needs = (True, True, t.requires_grad)
        torch.library.opcheck(torch.ops.lmcl.lmc_loss.default, args + needs)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()

    def step(z, a, t):
        return lmc_loss(z, a, t, tau=0.07, intra_weight=0.4) * 2.0

    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic)
    # Inductor's on-disk cache does not key on custom-op schemas: after a schema change it can replay
    # code that calls the old signature. Compile afresh.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(force_disable_caches=True):
        for B in (4, 6):
            case = _case(B, 3, 8)
            z1 = case["z"].clone().requires_grad_(True)
            z2 = case["z"].clone().requires_grad_(True)
            out_c = compiled(z1, case["anchor_idx"], case["teacher"])
            out_e = step(z2, case["anchor_idx"], case["teacher"])
            out_c.backward()
            out_e.backward()
            torch.testing.assert_close(out_c, out_e, **TOLERANCES[("lmc_loss", torch.float32)])
            assert_grad_close(z1.grad, z2.grad)


def test_tau_001_stays_finite():
    case = _case(8, 4, 32, tau=0.01, intra_weight=0.1)
    case["z"] = case["z"] * 50.0  # large raw norms: normalisation must still hold
    out, grads = _value_and_grads(lmc_loss, case)
    ref, ref_grads = _value_and_grads(reference_lmc_loss, case, torch.float64)
    assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    torch.testing.assert_close(out.double(), ref, **tol)
    for g, rg in zip(grads, ref_grads):
        assert_grad_close(g, rg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_inputs(device, dtype):
    # STYLE §3 (flash-attention rule): our error against float64 <= LOWP_ERROR_FACTOR x the error of the
    # eager reference computed in that dtype, on the same (rounded) inputs.
    for case in sample_inputs(device, dtype)[1:4]:
        out, grads = _value_and_grads(lmc_loss, case)
        assert out.dtype == torch.float32 and all(g.dtype == dtype for g in grads)
        ref, ref_grads = _value_and_grads(reference_lmc_loss, case, torch.float64)
        low, low_grads = _value_and_grads(
            lambda *a, **k: reference_lmc_loss(*a, **k, dtype=dtype), case)
        assert (out.double() - ref).abs() <= LOWP_ERROR_FACTOR * (low.double() - ref).abs() + 1e-12
        for g, rg, lg in zip(grads, ref_grads, low_grads):
            ours = (g.double() - rg).abs().max()
            eager = (lg.double() - rg).abs().max()
            assert ours <= LOWP_ERROR_FACTOR * eager, (ours, eager)


def test_cpu_is_deterministic():
    case = _case(64, 8, 32, tau=0.05, teacher=True)
    first = _value_and_grads(lmc_loss, case)
    second = _value_and_grads(lmc_loss, case)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


# ---------------------------------------------------------------------------------------------------
# Bad inputs: one test per rule, the message names the argument.
# ---------------------------------------------------------------------------------------------------

def _good():
    case = _case(3, 4, 8)
    return case["z"], case["anchor_idx"], case["teacher"]


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda z, a, t: (z[:1], a[:1], t[:1], {}), ValueError, "B >= 2"),
        (lambda z, a, t: (z[:, :1], a * 0, t[:, :1], {}), ValueError, "N >= 2"),
        (lambda z, a, t: (z, a, t[:, :3], {}), RuntimeError, "teacher"),
        (lambda z, a, t: (z, a, t.double(), {}), TypeError, "teacher"),
        (lambda z, a, t: (z[0], a, t[0], {}), RuntimeError, "z must have shape"),
        (lambda z, a, t: (z.to(torch.int32), a, t.to(torch.int32), {}), TypeError, "z must be"),
        (lambda z, a, t: (z, a + 4, t, {}), ValueError, "anchor_idx"),
        (lambda z, a, t: (z, a - 4, t, {}), ValueError, "anchor_idx"),
        (lambda z, a, t: (z, a.int(), t, {}), TypeError, "anchor_idx"),
        (lambda z, a, t: (z, a[:2], t, {}), RuntimeError, "anchor_idx"),
        (lambda z, a, t: (z, a, t, {"tau": 0.0}), ValueError, "tau"),
        (lambda z, a, t: (z, a, t, {"tau": -0.1}), ValueError, "tau"),
        (lambda z, a, t: (z, a, t, {"tau": float("nan")}), ValueError, "tau"),
        (lambda z, a, t: (z, a, t, {"tau": float("inf")}), ValueError, "tau"),
        (lambda z, a, t: (z, a, t, {"intra_weight": -0.5}), ValueError, "intra_weight"),
        (lambda z, a, t: (z, a, t, {"manifold_weight": float("nan")}), ValueError, "manifold_weight"),
    ],
    ids=["B", "N", "teacher-shape", "teacher-dtype", "z-rank", "z-dtype", "anchor-high", "anchor-negative",
         "anchor-dtype", "anchor-shape", "tau-zero", "tau-negative", "tau-nan", "tau-inf", "intra-negative",
         "manifold-nan"],
)
def test_bad_inputs_raise(mutate, exc, match):
    z, a, t = _good()
    z, a, t, kwargs = mutate(z, a, t)
    with pytest.raises(exc, match=match):
        lmc_loss(z, a, t, **kwargs)


def test_bad_key_offset_and_key_tile_raise():
    z, a, t = _good()
    with pytest.raises(ValueError, match="key_offset"):
        torch.ops.lmcl.lmc_loss(z, a, z, t, 1, 0.1, 0.5, 1.0)
    with pytest.raises(ValueError, match="key_tile"):
        torch.ops.lmcl.lmc_loss(z, a, z, t, 0, 0.1, 0.5, 1.0, -1)


# ---------------------------------------------------------------------------------------------------
# The CUDA launcher's bodies and launch configurations, run on the CPU (grid runner).
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key_tile, threads, max_blocks", [(0, 256, 4096), (7, 4, 3), (3, 32, 1), (50, 1, 1)])
@pytest.mark.parametrize("teacher", [True, False])
def test_grid_runner_matches_cpu_op(grid_runner, key_tile, threads, max_blocks, teacher):
    case = _case(4, 3, 6, tau=0.08, intra_weight=0.3, teacher=teacher, strided=True)
    z, a = case["z"], case["anchor_idx"]
    t = z if case["teacher"] is None else case["teacher"]
    args = (z, a, z, t, 0, 0.08, 0.3, 0.7)
    cpu = torch.ops.lmcl.lmc_loss(*args, key_tile, True, True, True)
    grid = grid_runner.lmc_loss(*args, key_tile, threads, max_blocks, True)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    for x, y in zip(grid[:4], cpu[:4]):
        torch.testing.assert_close(x, y, **tol)
    for x, y in zip(grid[4:], cpu[4:]):  # the unit gradients, from the CUDA entry's passes
        assert x.shape[0] > 0
        assert_grad_close(x, y)
    grad = torch.tensor(1.5)
    cpu_b = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], True, True, True)
    grid_b = grid_runner.lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], key_tile, threads, max_blocks)
    for x, y in zip(grid_b, cpu_b):
        assert_grad_close(x, y)


def test_grid_runner_with_key_offset(grid_runner):
    # A rank's view: 2 local images among 5 gathered ones, bf16 inputs.
    keys = _case(5, 3, 8, dtype=torch.bfloat16)
    z, a = keys["z"][2:4], keys["anchor_idx"][2:4]
    args = (z, a, keys["z"], keys["teacher"], 2, 0.1, 0.5, 1.0)
    cpu = torch.ops.lmcl.lmc_loss(*args)
    grid = grid_runner.lmc_loss(*args, 4, 8, 2)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    for x, y in zip(grid, cpu):
        torch.testing.assert_close(x, y, **tol)
    grad = torch.tensor(1.0)
    cpu_b = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], True, True, True)
    grid_b = grid_runner.lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], 4, 8, 2)
    for x, y in zip(grid_b, cpu_b):
        assert x.dtype == torch.bfloat16
        torch.testing.assert_close(x, y, rtol=0, atol=0)  # same float32 math, rounded once to bf16


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_grid_runner_other_dtypes(grid_runner, dtype):
    # The float64 bodies (gradcheck's path) and the fp16 loads/stores, several key tiles, wrapping grid.
    case = _case(4, 3, 6, tau=0.08, intra_weight=0.3, strided=True, dtype=dtype)
    args = (case["z"], case["anchor_idx"], case["z"], case["teacher"], 0, 0.08, 0.3, 0.7)
    cpu = torch.ops.lmcl.lmc_loss(*args)
    grid = grid_runner.lmc_loss(*args, 5, 4, 3)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    for x, y in zip(grid, cpu):
        assert x.dtype == y.dtype
        torch.testing.assert_close(x, y, **tol)
    grad = torch.tensor(1.5, dtype=cpu[0].dtype)
    cpu_b = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], True, True, True)
    grid_b = grid_runner.lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], 5, 4, 3)
    for x, y in zip(grid_b, cpu_b):
        assert x.dtype == y.dtype == dtype
        if dtype == torch.float64:
            assert_grad_close(x, y)
        else:  # the same float32 math, rounded once to fp16 (as for bf16 in test_grid_runner_with_key_offset)
            torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [-1, 3, 2**40])
def test_grid_runner_checks_anchor_idx_in_a_kernel(grid_runner, bad):
    """The CUDA entry checks anchor_idx in a kernel (a device-side assert on the GPU, no host read); the
    grid runner raises its message, worded as the CPU op's ValueError up to "got"."""
    case = _case(4, 3, 6)
    z, t, a = case["z"], case["teacher"], case["anchor_idx"].clone()
    a[2] = bad
    args = (z, a, z, t, 0, 0.1, 0.5, 1.0)
    with pytest.raises(ValueError) as cpu:
        torch.ops.lmcl.lmc_loss(*args)
    with pytest.raises(ValueError, match=rf"got anchor_idx\[2\] = {bad}") as grid:
        grid_runner.lmc_loss(*args, 0, 2, 1)
    assert str(grid.value).split(", got")[0] == str(cpu.value).split(", got")[0]


def test_grid_runner_row_groups_longer_than_a_warp(grid_runner):
    # Normalisation and the forward LSE run a warp (32 lanes) per row: rows of D = 70 values and tiles of 45
    # keys give every lane one to three elements, and 2 groups for 48 rows wrap around the grid.
    case = _case(12, 4, 70, tau=0.05, intra_weight=0.2, strided=True)
    args = (case["z"], case["anchor_idx"], case["z"], case["teacher"], 0, 0.05, 0.2, 0.9)
    cpu = torch.ops.lmcl.lmc_loss(*args, 45)
    grid = grid_runner.lmc_loss(*args, 45, 32, 2)
    for x, y in zip(grid, cpu):
        torch.testing.assert_close(x, y, **TOLERANCES[("lmc_loss", torch.float32)])
    grad = torch.tensor(0.7)
    cpu_b = torch.ops.lmcl._lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], True, True, True, 45)
    grid_b = grid_runner.lmc_loss_backward(grad, *args[:4], *cpu[1:4], *args[4:], 45, 32, 2)
    for x, y in zip(grid_b, cpu_b):
        assert_grad_close(x, y)


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_gemms_stay_float32_and_the_callers_setting_is_kept(grid_runner, precision):
    """The tile GEMMs run under at::NoTF32Guard (every grid-runner launch checks that it is on, here and in
    the other grid-runner tests), which leaves the caller's setting as it was and ends with the call."""
    case = _case(6, 4, 16, tau=0.05)
    expected = _value_and_grads(lmc_loss, case)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        got = _value_and_grads(lmc_loss, case)
        args = (case["z"], case["anchor_idx"], case["z"], case["teacher"], 0, 0.05, 0.5, 1.0)
        fwd = grid_runner.lmc_loss(*args, 7, 64, 2)
        grid_runner.lmc_loss_backward(torch.tensor(1.0), *args[:4], *fwd[1:4], *args[4:], 7, 64, 2)
        assert torch.get_float32_matmul_precision() == precision
        assert not grid_runner.tf32_disabled()
    finally:
        torch.set_float32_matmul_precision(before)
    # This CPU's float32 GEMMs ignore the setting (MKL); a GPU's would use TF32 without the guard
    # (test_cuda.py checks B=256 against float64 with TF32 allowed).
    assert torch.equal(got[0], expected[0]) and all(torch.equal(a, b) for a, b in zip(got[1], expected[1]))


@pytest.mark.parametrize("rows, cols", [(0, 5), (6, 0), (6, 5)])
def test_grid_runner_grad_tile_body(grid_runner, rows, cols):
    # The per-element backward body on its own: g = w exp(s / tau - lse) scale - [positive] scale, with
    # w = intra_weight for the other crops of the row's image. Keys start at col0 = 4, N = 2.
    s = torch.rand(rows, cols) * 2 - 1
    lse = torch.rand(rows) + 3.0
    tau, iw, scale, N, col0 = 0.2, 0.25, 0.5, 2, 4
    out = grid_runner.lmc_grad_tile(s, lse, col0, N, 0, tau, iw, scale, 4, 2)
    r = torch.arange(rows)[:, None]
    col = torch.arange(cols)[None, :] + col0
    same = (col // N) == (r // N)
    pos = col == r
    w = torch.where(same & ~pos, iw, 1.0)
    expected = w * torch.exp(s / tau - lse[:, None]) * scale - pos.float() * scale
    assert out.shape == (rows, cols)
    torch.testing.assert_close(out, expected, **TOLERANCES[("lmc_loss", torch.float32)])


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _to_cuda(case):
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}


@cuda
def test_cuda_matches_cpu():
    case = _case(16, 4, 32, tau=0.05)
    cpu = _value_and_grads(lmc_loss, case)
    gpu = _value_and_grads(lmc_loss, _to_cuda(case))
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], **tol)
    for g, c in zip(gpu[1], cpu[1]):
        assert_grad_close(g.cpu(), c)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("key_tile", [0, 7])
@pytest.mark.parametrize("teacher", [True, False])
def test_cuda_raw_ops_match_cpu(dtype, key_tile, teacher):
    # The CUDA tile loop (column-major forward tiles, cuBLAS GEMMs; several key tiles, the last one
    # narrower, at key_tile = 7) against the CPU op on the same inputs, forward outputs and backward.
    # fp16/bf16 gradients against the reference: test_low_precision_inputs (run on cuda too).
    case = _case(12, 4, 24, tau=0.05, intra_weight=0.3, teacher=teacher, strided=True, dtype=dtype)
    z, a = case["z"], case["anchor_idx"]
    t = z if case["teacher"] is None else case["teacher"]
    rest = (0, 0.05, 0.3, 0.8)
    cpu = torch.ops.lmcl.lmc_loss(z, a, z, t, *rest, key_tile)
    zc, ac = z.cuda(), a.cuda()
    tc = zc if case["teacher"] is None else t.cuda()
    gpu = torch.ops.lmcl.lmc_loss(zc, ac, zc, tc, *rest, key_tile)
    tol = TOLERANCES[("lmc_loss", torch.float32)]
    for x, y in zip(gpu, cpu):
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride()
        torch.testing.assert_close(x.cpu(), y, **tol)
    grad = torch.tensor(1.5, dtype=cpu[0].dtype)
    cpu_b = torch.ops.lmcl._lmc_loss_backward(grad, z, a, z, t, *cpu[1:4], *rest, True, True, True, key_tile)
    gpu_b = torch.ops.lmcl._lmc_loss_backward(grad.cuda(), zc, ac, zc, tc, *gpu[1:4], *rest, True, True, True, key_tile)
    for x, y in zip(gpu_b, cpu_b):
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride()
        if dtype != torch.bfloat16:
            assert_grad_close(x.cpu(), y)


@cuda
def test_cuda_key_offset_matches_cpu():
    # A rank's view on the GPU: 2 local images among 5 gathered ones, several key tiles.
    keys = _case(5, 3, 8)
    z, a = keys["z"][2:4], keys["anchor_idx"][2:4]
    args = (z, a, keys["z"], keys["teacher"], 2, 0.1, 0.5, 1.0, 4)
    cpu = torch.ops.lmcl.lmc_loss(*args)
    gpu = torch.ops.lmcl.lmc_loss(*[x.cuda() if isinstance(x, torch.Tensor) else x for x in args])
    for x, y in zip(gpu, cpu):
        torch.testing.assert_close(x.cpu(), y, **TOLERANCES[("lmc_loss", torch.float32)])


@cuda
def test_cuda_gradcheck_float64():
    case = _case(3, 3, 4, dtype=torch.float64, device="cuda")
    z = case["z"].requires_grad_(True)
    t = case["teacher"].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z_, t_: lmc_loss(z_, case["anchor_idx"], t_, tau=0.3), (z, t))


@cuda
def test_cuda_is_deterministic():
    # No atomics on the CUDA path (every thread owns its outputs): two runs are bit-equal.
    case = _to_cuda(_case(64, 8, 32, tau=0.05))
    first = _value_and_grads(lmc_loss, case)
    second = _value_and_grads(lmc_loss, case)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


@cuda
def test_cuda_bad_anchor_raises():
    case = _to_cuda(_case(4, 3, 8))
    with pytest.raises(ValueError, match="anchor_idx"):
        lmc_loss(case["z"], torch.tensor([0, 1, 3, 0], device="cuda"), case["teacher"])
