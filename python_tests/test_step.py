"""How the branches run (core/accel.py): torch.compile and channels-last give the eager numbers, checkpoints
are interchangeable, the compile policy; CUDA graphs (compile mode reduce-overhead) on a GPU."""
import pytest
import torch

from lmcl_fast.core import accel
from lmcl_fast.core import checkpoint as ckpt_io
from lmcl_fast.core.metric import load_metric
from lmcl_fast.data import IQADataset, random_splits
from lmcl_fast.train import TrainConfig, Trainer
from lmcl_fast.train.trainer import crop_seed
from lmcl_testing import TOLERANCES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(synthetic, out_dir, **kw) -> TrainConfig:
    root, csv_path = synthetic
    base = dict(root=root, csv=csv_path, out_dir=str(out_dir), arch="tiny", crop_size=32, n_crops=3, min_crop=16,
                batch_size=8, epochs=1, splits=1, num_workers=0, log_every=1, lr=2e-3, eval_grid=2,
                device="cpu", seed=0, compile="off")
    base.update(kw)
    return TrainConfig(**base)


def _trainer(cfg, run_dir):
    ds = IQADataset(cfg.root, cfg.csv)
    train_idx, test_idx = random_splits(ds.group_keys(), k=1, train_frac=cfg.train_frac, seed=cfg.split_seed)[0]
    return Trainer(cfg, ds, train_idx, test_idx, str(run_dir), progress=False)


def _steps(trainer, n, start=0):
    """Training steps start..n-1 on the batches of epoch 0; returns the logged totals so far."""
    trainer.loader.set_epoch(0, start=start * trainer.global_batch)
    for i, batch in enumerate(trainer.loader, start):
        if i == n:
            break
        trainer.train_step(batch, [crop_seed(trainer.cfg.seed, 0, j) for j in batch["index"].tolist()])
        trainer._read_logs()
    return torch.tensor([h["total"] for h in trainer.history])


def _assert_same_grads(ta, tb, tol):
    """The gradients of the last step agree (weights are not compared: AdamW's first updates are about
    lr * sign(g), so a gradient entry near zero flips its update on a rounding difference)."""
    for k in ("a", "b"):
        if k not in ta.models:
            continue
        for (name, pa), (_, pb) in zip(ta.models[k].named_parameters(), tb.models[k].named_parameters()):
            scale = pa.grad.abs().max().item()
            torch.testing.assert_close(pb.grad, pa.grad, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-3),
                                       msg=lambda m, k=k, name=name: f"{k}.{name}: {m}")


def test_channels_last_step_matches_contiguous(synthetic, tmp_path):
    ref = _trainer(_config(synthetic, tmp_path, memory_format="contiguous"), tmp_path / "a")
    cl = _trainer(_config(synthetic, tmp_path, memory_format="channels_last"), tmp_path / "b")
    w = cl.models["a"].backbone.features[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    tol = TOLERANCES[("compiled step", torch.float32)]
    _steps(cl, 1), _steps(ref, 1)
    _assert_same_grads(ref, cl, tol)
    torch.testing.assert_close(_steps(cl, 3, 1), _steps(ref, 3, 1), **TOLERANCES[("compiled run", torch.float32)])


def test_compiled_step_matches_eager_and_checkpoints_interchange(synthetic, tmp_path):
    eager = _trainer(_config(synthetic, tmp_path), tmp_path / "eager")
    compiled = _trainer(_config(synthetic, tmp_path, compile="default"), tmp_path / "compiled")
    assert compiled.compile_mode == "default" and eager.compile_mode is None
    assert compiled.compiled["a"] is not compiled.models["a"]
    tol = TOLERANCES[("compiled step", torch.float32)]
    _steps(compiled, 1), _steps(eager, 1)
    _assert_same_grads(eager, compiled, tol)
    torch.testing.assert_close(_steps(compiled, 2, 1), _steps(eager, 2, 1), **TOLERANCES[("compiled run", torch.float32)])

    # The checkpoint of the compiled run holds the plain modules' keys and loads into an eager metric and into
    # a compiled one (one static shape: on the CPU one image's crops per call), which score alike.
    compiled.save()
    ck = ckpt_io.load(compiled.ckpt_path)
    assert not [k for m in ck["models"].values() for k in m if "_orig_mod" in k]
    plain = load_metric(compiled.ckpt_path, "cpu", compile="off")
    fast = load_metric(compiled.ckpt_path, "cpu", compile="default")
    assert plain.compile_mode is None and fast.compile_mode == "default" and fast.static_crops == 4
    eager.loader.set_epoch(0)
    batch = next(iter(eager.loader))
    short = {k: batch[k][:5] for k in ("images", "heights", "widths")}
    torch.testing.assert_close(fast.predict_batch(**short), plain.predict_batch(**short), **tol)


def test_compile_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert accel.resolve_compile("off", cpu, 10**9) is None
    assert accel.resolve_compile("auto", cpu, 990) is None  # the demo: compiling would not pay
    assert accel.resolve_compile("auto", cpu, accel.AUTO_COMPILE_MIN_CALLS["cpu"]) == "default"
    assert accel.resolve_compile("auto", cuda, accel.AUTO_COMPILE_MIN_CALLS["cuda"]) == "default"
    assert accel.resolve_compile("max-autotune", cpu, 1) == "max-autotune"
    with pytest.raises(ValueError, match="reduce-overhead.*CUDA"):
        accel.resolve_compile("reduce-overhead", cpu, 1)
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="fast")
    with pytest.raises(ValueError, match="memory_format"):
        TrainConfig(memory_format="nhwc")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mutual", ["peer", "ema"])
def test_cuda_graph_step_matches_eager(synthetic, tmp_path, mutual):
    """compile=reduce-overhead: the branches' forward and backward are captured as CUDA graphs on the first
    steps and replayed after; the replayed steps give the eager step's numbers."""
    kw = dict(device="cuda", amp="off", mutual=mutual)
    eager = _trainer(_config(synthetic, tmp_path, **kw), tmp_path / "eager")
    graphs = _trainer(_config(synthetic, tmp_path, compile="reduce-overhead", **kw), tmp_path / "graphs")
    assert accel.uses_cuda_graphs(graphs.compile_mode)
    tol = TOLERANCES[("compiled step", torch.float32)]
    for step in range(4):  # warm-up, capture, then replays: each step from the same weights
        for k, model in eager.models.items():
            graphs.models[k].load_state_dict(model.state_dict())  # in place: the graphs' addresses stay
        _steps(graphs, step + 1, step), _steps(eager, step + 1, step)
        _assert_same_grads(eager, graphs, tol)
    graphs.save()
    fast = load_metric(graphs.ckpt_path, "cuda", compile="reduce-overhead")
    plain = load_metric(graphs.ckpt_path, "cuda", compile="off")
    assert fast.static_crops == 8 * 4  # on CUDA a batch of images per call, the short batch padded
    eager.loader.set_epoch(0)
    for batch in list(eager.loader)[:3]:  # recorded, then replayed
        short = {k: batch[k][:5] for k in ("images", "heights", "widths")}
        torch.testing.assert_close(fast.predict_batch(**short), plain.predict_batch(**short), **tol)
