"""End to end on CPU: synthetic data -> mutual-learning training -> evaluation; resume, corrupt images,
non-finite losses, config mismatches."""
import json
import os
import shutil

import pytest
import torch

from lmcl_fast.core import checkpoint as ckpt_io
from lmcl_fast.experiment import train_splits
from lmcl_fast.train import ConfigMismatchError, NonFiniteLossError, TrainConfig, Trainer
from lmcl_fast.train import trainer as trainer_mod
from lmcl_fast.train.elastic import replan_schedule, resume_plan
from lmcl_fast.train.schedule import make_scheduler
from lmcl_fast.train.tb_log import tensorboard_available
from lmcl_fast.train.throughput import PHASES, TIMING_KEYS
from lmcl_testing import TOLERANCES

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def tiny_config(synthetic, out_dir, **kw) -> TrainConfig:
    root, csv_path = synthetic
    base = dict(root=root, csv=csv_path, out_dir=str(out_dir), arch="tiny", crop_size=32, n_crops=3, min_crop=16,
                batch_size=8, epochs=3, splits=1, num_workers=0, log_every=1, lr=2e-3, eval_grid=2,
                device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    cfg = tiny_config(synthetic, tmp_path_factory.mktemp("run"))
    return cfg, train_splits(cfg, progress=False)


def test_end_to_end_writes_results_and_learns(trained):
    cfg, summary = trained
    split = os.path.join(cfg.out_dir, "split_00")
    for path in ["config.json", "metrics.json", "scatter.png", "split_00/last.pt", "split_00/config.json",
                 "split_00/metrics.json", "split_00/scatter.png", "split_00/predictions.csv",
                 "split_00/train_log.jsonl"]:
        assert os.path.isfile(os.path.join(cfg.out_dir, path)), path
    assert not [f for f in os.listdir(split) if f.endswith(".tmp")]
    with open(os.path.join(cfg.out_dir, "metrics.json")) as fh:
        metrics = json.load(fh)
    assert metrics["summary"]["srcc"]["median"] == summary["summary"]["srcc"]["median"]
    assert metrics["splits"][0]["n"] == 11  # one held-out content: pristine + 10 distorted
    assert TrainConfig.from_json(os.path.join(cfg.out_dir, "config.json")) == cfg

    ck = ckpt_io.load(os.path.join(split, "last.pt"), cfg)
    assert ck["epoch"] == 3 and ck["step"] == 3 * 4  # 33 training images // batch 8 = 4 steps per epoch
    assert set(ck["models"]) == {"a", "b"}
    assert {"optimizer", "scheduler", "scaler", "rng", "config", "mos_stats", "split"} <= set(ck)
    losses = [h["total"] for h in ck["history"]]
    assert len(losses) == 12 and all(v == v for v in losses)  # finite: no NaN
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first, losses


def test_train_log_is_read_every_log_every_steps(synthetic, tmp_path):
    cfg = tiny_config(synthetic, tmp_path, epochs=1, log_every=3)
    train_splits(cfg, progress=False)
    with open(tmp_path / "split_00" / "train_log.jsonl") as fh:
        steps = [json.loads(line)["step"] for line in fh]
    assert steps == [3, 4]  # every 3 steps, plus the end of the epoch


def _weights(path):
    return ckpt_io.load(path)["models"]


@pytest.mark.parametrize("mutual", ["peer", "ema"])
def test_resume_equals_uninterrupted(synthetic, tmp_path, mutual):
    cfg_a = tiny_config(synthetic, tmp_path / "a", epochs=2, mutual=mutual)
    train_splits(cfg_a, progress=False)
    cfg_b = cfg_a.replace(out_dir=str(tmp_path / "b"))
    assert train_splits(cfg_b, max_epochs=1, progress=False) is None  # stopped after epoch 1
    assert ckpt_io.load(str(tmp_path / "b" / "split_00" / "last.pt"))["epoch"] == 1
    summary_b = train_splits(cfg_b, resume=True, progress=False)
    assert summary_b is not None

    ha = ckpt_io.load(str(tmp_path / "a" / "split_00" / "last.pt"))["history"]
    hb = ckpt_io.load(str(tmp_path / "b" / "split_00" / "last.pt"))["history"]
    assert [h["step"] for h in ha] == [h["step"] for h in hb]
    tol = TOLERANCES[("resume", torch.float32)]
    torch.testing.assert_close(torch.tensor([h["total"] for h in hb]), torch.tensor([h["total"] for h in ha]), **tol)
    wa = _weights(str(tmp_path / "a" / "split_00" / "last.pt"))
    wb = _weights(str(tmp_path / "b" / "split_00" / "last.pt"))
    assert set(wa) == set(wb) == ({"a", "b"} if mutual == "peer" else {"a", "teacher"})
    for branch in wa:
        for k in wa[branch]:
            torch.testing.assert_close(wb[branch][k], wa[branch][k], **tol)


def test_ema_teacher_follows_student(synthetic, tmp_path):
    cfg = tiny_config(synthetic, tmp_path, epochs=1, mutual="ema")
    trainer = Trainer(cfg, *_split(cfg), str(tmp_path / "run"), progress=False)
    init = {k: v.clone() for k, v in trainer.models["teacher"].state_dict().items()}
    trainer.fit()
    teacher, student = trainer.models["teacher"].state_dict(), trainer.models["a"].state_dict()
    k = "backbone.features.0.weight"
    assert not torch.equal(teacher[k], init[k]) and not torch.equal(teacher[k], student[k])
    assert all(not p.requires_grad for p in trainer.models["teacher"].parameters())
    assert len(trainer.optimizer.param_groups[0]["params"]) + len(trainer.optimizer.param_groups[1]["params"]) \
        == len(list(trainer.models["a"].parameters()))


def _split(cfg):
    from lmcl_fast.data import IQADataset, random_splits

    ds = IQADataset(cfg.root, cfg.csv)
    train_idx, test_idx = random_splits(ds.group_keys(), k=1, train_frac=cfg.train_frac, seed=cfg.split_seed)[0]
    return ds, train_idx, test_idx


def test_corrupt_image_is_skipped_and_reported(synthetic, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic[0], root)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    csv_path = root / "labels.csv"
    rows = csv_path.read_text().splitlines()
    # The broken file joins a content of the training part, so the trainer meets it mid-epoch.
    ds, train_idx, _ = _split(tiny_config((str(root), str(csv_path)), tmp_path))
    ref = ds.group_keys()[int(train_idx[0])]
    csv_path.write_text("\n".join(rows + [f"images/broken.png,50.0,{ref}"]) + "\n")
    cfg = tiny_config((str(root), str(csv_path)), tmp_path / "run", epochs=1)
    summary = train_splits(cfg, progress=False)
    assert summary["skipped"] == ["images/broken.png"]
    with open(tmp_path / "run" / "metrics.json") as fh:
        assert json.load(fh)["skipped"] == ["images/broken.png"]
    assert ckpt_io.load(str(tmp_path / "run" / "split_00" / "last.pt"))["skipped"] == ["images/broken.png"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(synthetic, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic, tmp_path, epochs=3, log_every=2)
    calls = {"n": 0}
    real = trainer_mod.compute_losses

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] == 6:  # second step of epoch 2 (4 steps per epoch)
            return terms._replace(total=terms.total * float("nan"))
        return terms

    monkeypatch.setattr(trainer_mod, "compute_losses", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* step 6, epoch 2.*after epoch 1\) is kept"):
        train_splits(cfg, progress=False)
    ck = ckpt_io.load(str(tmp_path / "split_00" / "last.pt"))
    assert ck["epoch"] == 1 and ck["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["models"]["a"].values() if v.is_floating_point())


def test_resume_with_another_model_config_is_refused(trained, tmp_path):
    cfg, _ = trained
    ckpt = os.path.join(cfg.out_dir, "split_00", "last.pt")
    other = cfg.replace(embed_dim=64, out_dir=str(tmp_path))
    with pytest.raises(ConfigMismatchError, match="embed_dim: checkpoint 128 vs config 64"):
        Trainer(other, *_split(other), str(tmp_path / "x"), resume=ckpt, progress=False)
    with pytest.raises(ConfigMismatchError, match="mutual"):
        train_splits(cfg.replace(mutual="ema"), resume=True, progress=False)
    # Not resuming, but the out_dir holds another model's checkpoint: refused rather than overwritten.
    with pytest.raises(ConfigMismatchError, match="arch"):
        train_splits(cfg.replace(arch="resnet18"), progress=False)


def test_resume_on_another_split_is_refused(trained):
    cfg, _ = trained
    with pytest.raises(ConfigMismatchError, match="split"):
        train_splits(cfg.replace(split_seed=5), resume=True, progress=False)


def test_same_seed_same_numbers(trained, synthetic, tmp_path):
    cfg, summary = trained
    again = train_splits(cfg.replace(out_dir=str(tmp_path)), progress=False)
    assert json.dumps(again["splits"]) == json.dumps(summary["splits"])  # NaN-safe, bit-equal
    def numbers(run_dir):  # the logged values less the measured times and throughput
        history = ckpt_io.load(os.path.join(run_dir, "split_00", "last.pt"))["history"]
        return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]

    assert numbers(str(tmp_path)) == numbers(cfg.out_dir)


def test_log_lines_carry_throughput_and_the_step_time_split(trained):
    cfg, _ = trained
    with open(os.path.join(cfg.out_dir, "split_00", "train_log.jsonl")) as fh:
        entries = [json.loads(line) for line in fh]
    for e in entries:
        assert e["images_per_s"] > 0
        times = e["time_ms"]
        assert list(times) == ["step", *PHASES] and all(v >= 0 for v in times.values())
        # Wall clock on the CPU: the phases are disjoint parts of the interval the step time averages.
        assert sum(times[p] for p in PHASES) <= times["step"] * (1 + 1e-9)
        assert times["forward"] > 0 and times["backward"] > 0 and times["crops"] > 0


def _scalars(log_dir: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard not installed (the `tensorboard` extra)")
def test_tensorboard_has_losses_lr_throughput_and_test_metrics(trained):
    cfg, summary = trained
    split = os.path.join(cfg.out_dir, "split_00")
    scalars = _scalars(os.path.join(split, "tensorboard"))
    history = ckpt_io.load(os.path.join(split, "last.pt"))["history"]
    for tag, key in [("train/total", "total"), ("train/lmc", "lmc"), ("lr", "lr"),
                     ("throughput/images_per_s", "images_per_s")]:
        assert [s for s, _ in scalars[tag]] == [h["step"] for h in history], tag
        torch.testing.assert_close(torch.tensor([v for _, v in scalars[tag]]),
                                   torch.tensor([float(h[key]) for h in history]))  # float32 event values
    assert {f"time_ms/{p}" for p in ("step", *PHASES)} <= set(scalars)
    srcc = summary["splits"][0]["srcc"]
    assert scalars["test/srcc"] == [(12, pytest.approx(srcc, rel=1e-6))]


def test_no_tensorboard_flag_writes_no_event_files(synthetic, tmp_path):
    from lmcl_fast.data import IQADataset
    from lmcl_fast.data.splits import random_splits

    ds = IQADataset(*synthetic)
    train_idx, test_idx = random_splits(ds.group_keys(), k=1, train_frac=0.8, seed=0)[0]
    Trainer(tiny_config(synthetic, tmp_path, tensorboard=False), ds, train_idx, test_idx, str(tmp_path),
            progress=False)
    assert not os.path.exists(tmp_path / "tensorboard")


def test_resume_plan_keeps_the_global_batch_or_scales_the_learning_rate():
    kept = resume_plan(saved_global=8, saved_world=2, world=1, batch_size=4)
    assert (kept.batch_size, kept.global_batch, kept.lr_factor) == (8, 8, 1.0) and "global batch 8 kept" in kept.message
    assert resume_plan(8, 1, 4, 8).batch_size == 2
    assert resume_plan(8, 2, 2, 4).message is None  # same launch shape: nothing to say
    changed = resume_plan(saved_global=10, saved_world=2, world=4, batch_size=5)
    assert (changed.batch_size, changed.global_batch, changed.lr_factor) == (2, 8, 0.8)  # round(10 / 4) = 2
    assert "linear scaling" in changed.message and "10" in changed.message
    assert resume_plan(8, 1, 3, 8).global_batch == 9  # round(8 / 3) = 3 per process


def test_replanned_schedule_goes_on_at_the_same_fraction_of_the_run():
    def sched(steps_per_epoch, lr=1.0):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        return opt, make_scheduler(opt, 10 * steps_per_epoch, warmup_frac=0.1, min_ratio=0.01)

    opt, sch = sched(8)  # global batch 10 over 80 images: 8 steps per epoch
    for _ in range(30):
        opt.step()
        sch.step()
    opt2, sch2 = sched(10)  # resumed with global batch 8: 10 steps per epoch
    sch2.load_state_dict(sch.state_dict())
    replan_schedule(opt2, sch2, factor=0.8, steps_ratio=10 / 8)
    assert sch2.last_epoch == round(30 * 10 / 8)
    # The multiplier is where it was (37.5 of 100 steps vs 30 of 80), the peak scaled by 8 / 10.
    torch.testing.assert_close(opt2.param_groups[0]["lr"], 0.8 * opt.param_groups[0]["lr"], rtol=2e-2, atol=0)


def test_cuda_step_timer_reads_its_events_only_at_log_time(monkeypatch):
    """The CUDA path without a GPU: fake events on a fake clock. Recording never waits; read() waits for the
    last event once and turns consecutive events into the phases."""
    from lmcl_fast.train import throughput

    clock, synced = [0.0], []

    class FakeEvent:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self, stream):
            self.t = clock[0]

        def synchronize(self):
            synced.append(self)

        def elapsed_time(self, end):  # milliseconds, as CUDA events give them
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: None)
    timer = throughput.StepTimer(torch.device("cuda", 0))
    for _ in range(2):
        timer.waited(0.5)
        timer.begin()
        for i, phase in enumerate(PHASES[1:], start=1):
            clock[0] += i  # phase i takes i seconds of device time
            timer.mark(phase)
        timer.end(images=8)
    assert synced == []  # nothing waited for the device during the steps
    out = timer.read()
    assert len(synced) == 1
    assert out["time_ms"]["data"] == pytest.approx(500.0)
    for i, phase in enumerate(PHASES[1:], start=1):
        assert out["time_ms"][phase] == pytest.approx(i * 1e3), phase
    assert out["images_per_s"] > 0 and timer.read() is None  # a new, empty interval
