"""`lmcl ablate` (paired statistics, resumable runner, report), `lmcl probe` on checkpoints and weight files, and
cross-dataset `lmcl eval`, on a tiny configuration."""
import json
import os

import numpy as np
import pytest
from scipy import stats

from lmcl_fast.ablate import VARIANTS, paired_test, parse_variants, run_ablation, summarize_ablation
from lmcl_fast.cli import main
from lmcl_fast.core.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(arch="tiny", crop_size=32, n_crops=3, min_crop=16, batch_size=8, epochs=1, splits=2, num_workers=0,
            log_every=1, lr=2e-3, eval_grid=2, device="cpu", seed=0)


def test_paired_test_matches_scipy():
    diffs = [0.02, -0.01, 0.03, 0.05, None, 0.0, 0.04]
    p = paired_test(diffs)
    assert (p["n"], p["wins"], p["losses"], p["ties"]) == (6, 4, 1, 1)
    assert p["median_diff"] == pytest.approx(np.median([0.02, -0.01, 0.03, 0.05, 0.0, 0.04]))
    assert p["sign_p"] == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue)
    assert p["wilcoxon_p"] == pytest.approx(stats.wilcoxon([0.02, -0.01, 0.03, 0.05, 0.04]).pvalue)
    assert np.isnan(paired_test([0.0, 0.0])["wilcoxon_p"])


def test_summary_uses_the_splits_both_variants_finished():
    m = lambda s: {"srcc": s, "plcc": s, "plcc_logistic": s}  # noqa: E731
    results = {"full": [m(0.5), m(0.6), None], "no_lmc": [m(0.4), None, m(0.9)]}
    s = summarize_ablation(results, 3)
    assert s["full"]["splits_done"] == 2 and s["full"]["summary"]["srcc"]["median"] == pytest.approx(0.55)
    assert s["no_lmc"]["paired"]["srcc"]["diffs"] == [pytest.approx(-0.1), None, None]
    assert s["no_lmc"]["paired"]["srcc"]["n"] == 1


def test_parse_variants():
    assert parse_variants(None) == list(VARIANTS)
    assert parse_variants("no_lmc, ema_teacher") == ["full", "no_lmc", "ema_teacher"]
    with pytest.raises(ValueError, match="no_such"):
        parse_variants("no_such")


@pytest.fixture(scope="module")
def ablation(synthetic, tmp_path_factory):
    """Two variants x two splits, run in two invocations: one run, then the rest."""
    root, csv_path = synthetic
    cfg = TrainConfig(root=root, csv=csv_path, out_dir=str(tmp_path_factory.mktemp("ablate")), **TINY)
    variants = ["full", "single_branch"]
    first = run_ablation(cfg, variants, progress=False, max_runs=1)
    done = {v: [m is not None for m in first["results"][v]] for v in variants}
    metrics = os.path.join(cfg.out_dir, "full", "split_00", "metrics.json")
    stamp = (os.path.getmtime(metrics), os.path.getmtime(os.path.join(cfg.out_dir, "full", "split_00", "last.pt")))
    report = run_ablation(cfg, variants, progress=False)
    return cfg, done, stamp, report


def test_ablation_runner_resumes(ablation):
    cfg, done, stamp, report = ablation
    assert done == {"full": [True, False], "single_branch": [False, False]}
    # The finished run was skipped (its files untouched), the others trained.
    full0 = os.path.join(cfg.out_dir, "full", "split_00")
    assert (os.path.getmtime(os.path.join(full0, "metrics.json")),
            os.path.getmtime(os.path.join(full0, "last.pt"))) == stamp
    assert all(m is not None for per in report["results"].values() for m in per)
    with open(os.path.join(cfg.out_dir, "single_branch", "split_01", "config.json")) as fh:
        assert json.load(fh)["mutual"] == "none"
    # Same splits for every variant.
    for i in range(2):
        names = [json.load(open(os.path.join(cfg.out_dir, v, f"split_{i:02d}", "metrics.json")))["metrics"]["n"]
                 for v in ("full", "single_branch")]
        assert names[0] == names[1]
    for f in ("ablation.json", "ablation.md", "ablation.png"):
        assert os.path.isfile(os.path.join(cfg.out_dir, f))
    assert "Wilcoxon" in report["table"] and "`single_branch` | 2/2" in report["table"]
    with pytest.raises(ValueError, match="another configuration"):
        run_ablation(cfg.replace(lr=1e-3), ["full"], progress=False)


def test_probe_checkpoint_and_weights(ablation, synthetic, tmp_path, capsys):
    cfg, *_ = ablation
    ckpt = os.path.join(cfg.out_dir, "full", "split_00", "last.pt")
    assert main(["probe", ckpt, "--out", str(tmp_path / "own"), "--num-workers", "0"]) == 0
    with open(tmp_path / "own" / "metrics.json") as fh:
        assert len(json.load(fh)["splits"]) == 1  # its own split
    root, csv_path = synthetic
    # A bare backbone (random init: the baseline) on 2 splits of the dataset.
    args = ["probe", "--arch", "tiny", "--root", root, "--csv", csv_path, "--splits", "2", "--crop-size", "32",
            "--min-crop", "16", "--eval-grid", "2", "--num-workers", "0", "--device", "cpu", "--out",
            str(tmp_path / "bare")]
    assert main(args) == 0
    with open(tmp_path / "bare" / "metrics.json") as fh:
        out = json.load(fh)
    assert len(out["splits"]) == 2 and set(out["summary"]) >= {"srcc", "plcc", "plcc_logistic"}
    assert "srcc" in capsys.readouterr().out


def test_eval_on_another_dataset(ablation, photos_dir, tmp_path, capsys):
    """Train on the basic set, test on a KADID-style set: same table, with the logistic-fitted PLCC."""
    cfg, *_ = ablation
    from lmcl_fast.data import make_synthetic

    other = make_synthetic(photos_dir, tmp_path / "kadid", levels=1, max_images=2, size=48, distortions="kadid")
    run = os.path.join(cfg.out_dir, "full")
    assert main(["eval", run, "--root", str(tmp_path / "kadid"), "--csv", other, "--num-workers", "0",
                 "--device", "cpu", "--out", str(tmp_path / "cross")]) == 0
    table = capsys.readouterr().out
    assert "plcc_logistic" in table and "median" in table
    with open(tmp_path / "cross" / "metrics.json") as fh:
        assert [s["n"] for s in json.load(fh)["splits"]] == [52, 52]  # 2 photos x (1 + 25 types)
