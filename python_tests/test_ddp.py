"""Training under torchrun / DistributedDataParallel on CPU with gloo (SPEC §2 "Scale"): 2 processes x batch b
follow 1 process x batch 2b; a run killed mid-training resumes from its last checkpoint; ranks agree on
batches with skipped images; the EMA teacher is identical on every rank; clear errors."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from lmcl_fast.core import checkpoint as ckpt_io
from lmcl_fast.core.dist import DistContext
from lmcl_fast.core.pipeline import CropPipeline
from lmcl_fast.data import IQADataset, make_loader, random_splits
from lmcl_fast.train import TrainConfig, Trainer
from lmcl_fast.train.tb_log import tensorboard_available
from lmcl_testing import ROOT, TOLERANCES

B = 4  # images per rank; the single-process reference uses 2 * B
# 33 training images: 4 steps per epoch in both layouts (2 ranks x 17 rows // 4, 33 // 8).
EPOCHS, STEPS = 3, 12
# The tiny CNN's BatchNorm runs on its running statistics (batch_norm=frozen): no batch dependence, so the
# 2 x b run computes the same function as the 1 x 2b run (CPU SyncBatchNorm does not exist).
FLAGS = ["--arch", "tiny", "--crop-size", "32", "--n-crops", "3", "--min-crop", "16", "--epochs", str(EPOCHS),
         "--splits", "1", "--num-workers", "0", "--log-every", "1", "--lr", "2e-3", "--eval-grid", "2",
         "--device", "cpu", "--seed", "0", "--batch-norm", "frozen", "--save-every", "2", "--no-progress",
         "--log-images"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list, log_path: str) -> subprocess.Popen:
    """`python -m torch.distributed.run --nproc_per_node=2 -m lmcl_fast.cli train ...` (gloo on CPU)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "lmcl_fast.cli", "train"] + args
    return subprocess.Popen(cmd, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log_path: str, timeout: float = 120) -> None:
    rc = proc.wait(timeout=timeout)
    with open(log_path) as fh:
        assert rc == 0, fh.read()[-12000:]


def _log(run_dir: str) -> list:
    with open(os.path.join(run_dir, "split_00", "train_log.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def _data_flags(synthetic, out_dir) -> list:
    return ["--root", synthetic[0], "--csv", synthetic[1], "--out-dir", str(out_dir)]


@pytest.fixture(scope="module")
def two_ranks(synthetic, tmp_path_factory):
    """An uninterrupted 2-rank run, batch B per rank."""
    out = tmp_path_factory.mktemp("two_ranks")
    proc = _torchrun(_data_flags(synthetic, out) + FLAGS + ["--batch-size", str(B)], str(out / "torchrun.log"))
    _finish(proc, str(out / "torchrun.log"))
    return str(out)


def _split(root, csv_path):
    ds = IQADataset(root, csv_path)
    train_idx, test_idx = random_splits(ds.group_keys(), k=1, train_frac=0.8, seed=0)[0]
    return ds, train_idx, test_idx


def _config(synthetic, out_dir, **kw) -> TrainConfig:
    base = dict(root=synthetic[0], csv=synthetic[1], out_dir=str(out_dir), arch="tiny", crop_size=32, n_crops=3,
                min_crop=16, epochs=EPOCHS, splits=1, num_workers=0, log_every=1, lr=2e-3, eval_grid=2,
                device="cpu", seed=0, batch_norm="frozen", save_every=2, batch_size=2 * B, log_images=True)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def one_process(synthetic, tmp_path_factory):
    """The same run in one process with batch 2 B (in-process)."""
    out = tmp_path_factory.mktemp("one_process")
    Trainer(_config(synthetic, out), *_split(*synthetic), str(out / "split_00"), progress=False).fit()
    return str(out)


def test_two_ranks_follow_one_process_with_the_global_batch(two_ranks, one_process):
    single, ddp = _log(one_process), _log(two_ranks)
    assert [h["step"] for h in single] == [h["step"] for h in ddp] == list(range(1, STEPS + 1))
    assert [h["lr"] for h in single] == [h["lr"] for h in ddp]
    tol = TOLERANCES[("ddp", torch.float32)]
    for term in ("total", "quality", "lmc", "kl"):
        torch.testing.assert_close(torch.tensor([h[term] for h in ddp]), torch.tensor([h[term] for h in single]),
                                   msg=lambda m: f"{term}: {m}", **tol)
    ck = ckpt_io.load(os.path.join(two_ranks, "split_00", "last.pt"))
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["step"] == STEPS
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # per-rank seeding


def _worker_pid(torchrun: subprocess.Popen, local_rank: str) -> int:
    for child in psutil.Process(torchrun.pid).children(recursive=True):
        try:
            if child.environ().get("LOCAL_RANK") == local_rank:
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no torchrun worker with LOCAL_RANK={local_rank}")


def test_killed_rank_leaves_a_loadable_checkpoint_and_resume_finishes_the_run(synthetic, two_ranks, tmp_path):
    args = _data_flags(synthetic, tmp_path) + FLAGS + ["--batch-size", str(B)]
    ckpt = tmp_path / "split_00" / "last.pt"
    proc = _torchrun(args, str(tmp_path / "killed.log"))
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its first checkpoint could be seen"
    os.kill(_worker_pid(proc, "1"), signal.SIGKILL)
    assert proc.wait(timeout=60) != 0  # torchrun tears the other rank down and reports the failure

    ck = ckpt_io.load(str(ckpt))
    assert 2 <= ck["step"] < STEPS, "the kill must land mid-training"
    assert ck["step"] % 2 == 0 and [h["step"] for h in ck["history"]] == list(range(1, ck["step"] + 1))

    proc = _torchrun(args + ["--resume"], str(tmp_path / "resumed.log"))
    _finish(proc, str(tmp_path / "resumed.log"))
    final = ckpt_io.load(str(ckpt))
    assert final["step"] == STEPS
    # The resumed run replays the uninterrupted one: same losses, same weights.
    uninterrupted = ckpt_io.load(os.path.join(two_ranks, "split_00", "last.pt"))
    tol = TOLERANCES[("resume", torch.float32)]
    assert _log(str(tmp_path)) == final["history"]  # entries logged after the checkpoint were dropped
    assert [h["step"] for h in final["history"]] == [h["step"] for h in uninterrupted["history"]]
    torch.testing.assert_close(torch.tensor([h["total"] for h in final["history"]]),
                               torch.tensor([h["total"] for h in uninterrupted["history"]]), **tol)
    for branch, state in uninterrupted["models"].items():
        for k, v in state.items():
            torch.testing.assert_close(final["models"][branch][k], v, **tol)


# ------------------------------------------------------------------------------- in-process, 2 gloo ranks
class _Stop(Exception):
    pass


def _stop_after(trainer, steps: int) -> None:
    """Make `trainer` stop (as if preempted) when it is about to take optimizer step `steps` + 1."""
    step = trainer.train_step

    def stopping_step(batch, seeds):
        if trainer.step == steps:
            raise _Stop
        step(batch, seeds)

    trainer.train_step = stopping_step


def _elastic_worker(rank, world, init_file, cfg_dict, run_dir, resume, stop_at):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank, world, 0, dist.group.WORLD, dist.group.WORLD)
        cfg = TrainConfig(**cfg_dict)
        trainer = Trainer(cfg, *_split(cfg.root, cfg.csv), run_dir, dist=ctx, resume=resume, progress=False)
        if stop_at:
            _stop_after(trainer, stop_at)
        try:
            trainer.fit()
        except _Stop:
            pass
    finally:
        dist.destroy_process_group()


def _images_by_epoch(run_dir: str) -> dict:
    by_epoch: dict = {}
    for name in sorted(os.listdir(run_dir)):
        if name.startswith("images_rank"):
            with open(os.path.join(run_dir, name)) as fh:
                for line in fh:
                    entry = json.loads(line)
                    by_epoch.setdefault(entry["epoch"], []).extend(entry["names"])
    return by_epoch


# The interrupted runs stop about to take step 8 (after the checkpoint of step 6, mid-epoch 2: 2 of its 4 global
# batches consumed, and after logging step 7, which the resume must drop).
STOP_AT, SAVED_STEP = 7, 6


def _check_elastic_run(run_dir: str, uninterrupted: str) -> None:
    """The resumed run ends where the uninterrupted run ends: the same losses and weights (within the DDP
    tolerance), each epoch's images each seen once, the same images in each epoch, one log entry per step.

    `uninterrupted` is the run with the process layout of the interrupted part: 1 x 2B and 2 x B runs log the
    same losses (test above) but reach weights up to ~2e-3 apart (float32 sums in another order make AdamW's
    first, normalised, updates differ where gradients are ~0), while the layout of the resumed part changes
    the weights by ~1e-6 only (measured on the 2-core sandbox)."""
    final = ckpt_io.load(os.path.join(run_dir, "last.pt"))
    reference = ckpt_io.load(os.path.join(uninterrupted, "split_00", "last.pt"))
    assert final["step"] == STEPS and [h["step"] for h in final["history"]] == list(range(1, STEPS + 1))
    tol = TOLERANCES[("ddp", torch.float32)]
    for term in ("total", "quality", "lmc", "kl"):
        torch.testing.assert_close(torch.tensor([h[term] for h in final["history"]]),
                                   torch.tensor([h[term] for h in reference["history"]]), **tol)
    for branch, state in reference["models"].items():
        for k, v in state.items():
            torch.testing.assert_close(final["models"][branch][k], v, **tol, msg=lambda m: f"{branch}.{k}: {m}")
    if tensorboard_available():  # step 7, logged before the stop, was dropped from the event files too
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(os.path.join(run_dir, "tensorboard"))
        events.Reload()
        assert [e.step for e in events.Scalars("train/total")] == list(range(1, STEPS + 1))
    seen, expected = _images_by_epoch(run_dir), _images_by_epoch(os.path.join(uninterrupted, "split_00"))
    assert sorted(seen) == sorted(expected) == list(range(1, EPOCHS + 1))
    for epoch, names in seen.items():
        assert len(names) == len(set(names)) == STEPS // EPOCHS * 2 * B, f"epoch {epoch}"
        assert set(names) == set(expected[epoch]), f"epoch {epoch}"


def test_two_ranks_stopped_mid_epoch_resume_on_one_process(synthetic, two_ranks, tmp_path):
    run_dir = str(tmp_path / "split_00")
    cfg = _config(synthetic, tmp_path, batch_size=B)  # 2 x B, as two_ranks
    mp.spawn(_elastic_worker, args=(2, str(tmp_path / "init"), cfg.to_dict(), run_dir, None, STOP_AT), nprocs=2,
             join=True)
    ck = ckpt_io.load(os.path.join(run_dir, "last.pt"))
    assert (ck["world_size"], ck["step"], ck["epoch"], ck["epoch_position"]) == (2, SAVED_STEP, 1, 2 * 2 * B)

    trainer = Trainer(cfg, *_split(*synthetic), run_dir, resume=os.path.join(run_dir, "last.pt"), progress=False)
    assert trainer.cfg.batch_size == 2 * B and trainer.global_batch == 2 * B  # the global batch is kept
    trainer.fit()
    _check_elastic_run(run_dir, two_ranks)  # the interrupted part ran on 2 ranks


def test_one_process_stopped_mid_epoch_resumes_on_two_ranks(synthetic, one_process, tmp_path):
    run_dir = str(tmp_path / "split_00")
    cfg = _config(synthetic, tmp_path)  # 1 x 2B
    trainer = Trainer(cfg, *_split(*synthetic), run_dir, progress=False)
    _stop_after(trainer, STOP_AT)
    with pytest.raises(_Stop):
        trainer.fit()
    ck = ckpt_io.load(os.path.join(run_dir, "last.pt"))
    assert (ck["world_size"], ck["step"], ck["epoch_position"]) == (1, SAVED_STEP, 2 * 2 * B)

    mp.spawn(_elastic_worker, args=(2, str(tmp_path / "init"), cfg.to_dict(), run_dir,
                                    os.path.join(run_dir, "last.pt"), 0), nprocs=2, join=True)
    assert TrainConfig.from_json(os.path.join(run_dir, "config.json")).batch_size == B  # 2 x B: same global batch
    _check_elastic_run(run_dir, one_process)  # the interrupted part ran in one process


def _ema_worker(rank, init_file, root, csv_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ctx = DistContext(rank, 2, 0, dist.group.WORLD, dist.group.WORLD)
        cfg = TrainConfig(root=root, csv=csv_path, out_dir=out_dir, arch="tiny", crop_size=32, n_crops=3, min_crop=16,
                          epochs=1, splits=1, num_workers=0, log_every=2, device="cpu", seed=0, batch_size=B,
                          mutual="ema", ema_momentum=0.5, batch_norm="local")
        trainer = Trainer(cfg, *_split(root, csv_path), os.path.join(out_dir, "split_00"), dist=ctx, progress=False)
        sizes, step = [], trainer.train_step

        def recording_step(batch, seeds):
            sizes.append(batch["images"].shape[0])
            step(batch, seeds)

        trainer.train_step = recording_step
        trainer.fit()
        torch.save(dict(sizes=sizes, teacher=trainer.models["teacher"].state_dict(),
                        student=dict(trainer.models["a"].named_parameters()), skipped=trainer.skipped),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_batches_with_skipped_images_and_keep_one_ema_teacher(synthetic, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic[0], root)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    csv_path = root / "labels.csv"
    ds, train_idx, _ = _split(str(root), str(csv_path))
    ref = ds.group_keys()[int(train_idx[0])]  # joins a training content: one rank meets it mid-epoch
    csv_path.write_text(csv_path.read_text() + f"images/broken.png,50.0,{ref}\n")
    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(_ema_worker, args=(str(tmp_path / "init"), str(root), str(csv_path), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2))
    # 34 training rows: 17 per rank, 4 batches of 4; the rank holding broken.png has 3 images in one of
    # them and the other rank trims that step to 3 as well.
    assert r0["sizes"] == r1["sizes"] and sorted(r0["sizes"]) == [3, 4, 4, 4]
    assert r0["skipped"] == r1["skipped"] == ["images/broken.png"]  # merged over the ranks at the checkpoint
    for k, v in r0["student"].items():
        assert torch.equal(v, r1["student"][k]), k
    for k, v in r0["teacher"].items():  # parameters and BatchNorm statistics
        assert torch.equal(v, r1["teacher"][k]), k


# ----------------------------------------------------------------------------------------------- units
def test_crops_of_an_image_do_not_depend_on_its_batch(synthetic):
    ds = IQADataset(*synthetic)
    cfg = TrainConfig(arch="tiny", crop_size=16, n_crops=3, min_crop=8)
    images = torch.stack([ds[i]["image"] for i in range(4)])
    hw = torch.full((4,), 64, dtype=torch.int64)
    seeds = [11, 12, 13, 14]
    pipe = CropPipeline(cfg, torch.device("cpu"))
    crops, prior = pipe.train_crops(images, hw, hw, seeds)
    perm = [2, 0, 3, 1]
    crops_p, prior_p = pipe.train_crops(images[perm], hw, hw, [seeds[i] for i in perm])
    assert torch.equal(crops_p, crops[perm]) and torch.equal(prior_p, prior[perm])
    crops_half, _ = pipe.train_crops(images[2:], hw[2:], hw[2:], seeds[2:])
    assert torch.equal(crops_half, crops[2:])


def test_loader_starts_an_epoch_part_way(synthetic):
    loader = make_loader(IQADataset(*synthetic), 4, shuffle=True, seed=3, num_workers=0, rank=1, world_size=2,
                         drop_last=True)
    loader.set_epoch(2)
    full = [b["index"] for b in loader]
    loader.set_epoch(2, start=3 * 2 * 4)  # 3 global batches of 2 ranks x 4 rows consumed
    tail = [b["index"] for b in loader]
    assert len(full) == len(loader) == 5 and len(tail) == 2 == loader.batches(24)
    assert all(torch.equal(a, b) for a, b in zip(tail, full[3:]))
    with pytest.raises(ValueError, match="start"):
        loader.set_epoch(2, start=len(loader.dataset) + 1)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_distributed_samplers_and_resume_on_any_world_size(synthetic, drop_last):
    ds = IQADataset(*synthetic)  # 44 rows
    for world in (1, 2, 3, 5):
        for rank in range(world):
            loader = make_loader(ds, 4, shuffle=True, seed=3, num_workers=0, rank=rank, world_size=world,
                                 drop_last=drop_last)
            loader.set_epoch(1)
            ref = DistributedSampler(ds, world, rank, shuffle=True, seed=3, drop_last=drop_last)
            ref.set_epoch(1)
            assert list(loader.sampler) == list(ref)
    # Global batches (G = 8 rows) of 2 ranks, then of 1 and of 4 from row 16 on: the rows of the epoch's
    # order in sequence, each once.
    def global_rows(world, batch, start):
        shards = []
        for rank in range(world):
            loader = make_loader(ds, batch, shuffle=True, seed=3, num_workers=0, rank=rank, world_size=world,
                                 drop_last=True)
            loader.set_epoch(1, start=start)
            shards.append([b["index"].tolist() for b in loader])
        # rank r's j-th row of a step is row r + world * j of the step's global batch
        return [i for step in zip(*shards) for column in zip(*step) for i in column]

    order = global_rows(1, 8, 0)
    assert len(order) == 40 and len(set(order)) == 40
    assert global_rows(2, 4, 0)[:16] + global_rows(1, 8, 16) == order
    assert sorted(global_rows(2, 4, 0)[:16] + global_rows(4, 2, 16)) == sorted(order)


def test_global_batch_larger_than_the_training_set_is_refused(synthetic, tmp_path):
    cfg = _config(synthetic, tmp_path, batch_size=8)
    with pytest.raises(ValueError, match=r"global batch \(8 process\(es\) x batch_size 8 = 64 images\).*33"):
        Trainer(cfg, *_split(*synthetic), str(tmp_path), dist=DistContext(rank=0, world_size=8), progress=False)


def test_sync_batch_norm_on_cpu_is_refused(synthetic, tmp_path):
    cfg = _config(synthetic, tmp_path, batch_size=4, batch_norm="sync")
    with pytest.raises(ValueError, match="batch_norm=sync needs CUDA"):
        Trainer(cfg, *_split(*synthetic), str(tmp_path), dist=DistContext(rank=0, world_size=2), progress=False)
