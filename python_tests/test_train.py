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
    first = ckpt_io.load(os.path.join(cfg.out_dir, "split_00", "last.pt"))["history"]
    assert ckpt_io.load(str(tmp_path / "split_00" / "last.pt"))["history"] == first
