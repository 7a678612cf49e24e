"""The `lmcl` command line, in process (and once as `python -m lmcl_fast`)."""
import json
import os
import subprocess
import sys

import pytest

from lmcl_fast import demo
from lmcl_fast.cli import main
from lmcl_fast.train import ConfigMismatchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TRAIN_FLAGS = ["--arch", "tiny", "--crop-size", "32", "--n-crops", "3", "--min-crop", "16", "--batch-size", "8",
               "--epochs", "1", "--num-workers", "0", "--eval-grid", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def cli_run(photos_dir, tmp_path_factory):
    """make-synthetic then train 2 splits of 1 epoch through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    data, out = str(base / "data"), str(base / "run")
    assert main(["make-synthetic", photos_dir, data, "--levels", "2", "--max-images", "4", "--size", "64"]) == 0
    csv_path = os.path.join(data, "labels.csv")
    assert main(["train", "--root", data, "--csv", csv_path, "--out-dir", out, "--splits", "2"] + TRAIN_FLAGS) == 0
    return data, csv_path, out


def test_make_synthetic_prints_the_csv(cli_run, capsys, photos_dir, tmp_path):
    args = ["make-synthetic", photos_dir, str(tmp_path), "--levels", "1", "--max-images", "1", "--size", "32"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == os.path.join(str(tmp_path), "labels.csv")


def test_train_writes_config_and_summary(cli_run):
    _, csv_path, out = cli_run
    with open(os.path.join(out, "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["arch"] == "tiny" and cfg["splits"] == 2 and cfg["csv"] == csv_path and cfg["hflip"] is True
    with open(os.path.join(out, "metrics.json")) as fh:
        metrics = json.load(fh)
    assert len(metrics["splits"]) == 2
    assert set(metrics["summary"]["srcc"]) == {"median", "mean", "std", "min", "max"}
    assert os.path.isfile(os.path.join(out, "scatter.png"))


def test_eval_run_folder_and_checkpoint(cli_run, capsys, tmp_path):
    _, _, out = cli_run
    with open(os.path.join(out, "metrics.json")) as fh:
        trained = json.load(fh)["splits"]
    assert main(["eval", out, "--out", str(tmp_path / "all"), "--num-workers", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "srcc" in printed and "median" in printed
    with open(tmp_path / "all" / "metrics.json") as fh:
        assert json.load(fh)["splits"] == trained  # same checkpoints, same test splits, same numbers
    ckpt = os.path.join(out, "split_01", "last.pt")
    assert main(["eval", ckpt, "--num-workers", "0", "--device", "cpu"]) == 0
    with open(os.path.join(out, "split_01", "eval", "metrics.json")) as fh:
        assert json.load(fh)["metrics"] == trained[1]
    assert os.path.isfile(os.path.join(out, "split_01", "eval", "scatter.png"))


def test_eval_on_another_dataset(cli_run, tmp_path):
    data, csv_path, out = cli_run
    ckpt = os.path.join(out, "split_00", "last.pt")
    assert main(["eval", ckpt, "--root", data, "--csv", csv_path, "--out", str(tmp_path), "--num-workers", "0",
                 "--device", "cpu"]) == 0
    with open(tmp_path / "metrics.json") as fh:
        assert json.load(fh)["metrics"]["n"] == 44  # every image of the set


def test_predict_prints_a_score_per_image(cli_run, capsys, tmp_path):
    data, _, out = cli_run
    images = sorted(os.listdir(os.path.join(data, "images")))[:2]
    paths = [os.path.join(data, "images", n) for n in images]
    ckpt = os.path.join(out, "split_00", "last.pt")
    assert main(["predict", *paths, "--checkpoint", ckpt, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == paths
    assert all(float(line.split("\t")[0]) == float(line.split("\t")[0]) for line in lines)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(bad), paths[0], "--checkpoint", ckpt, "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "cannot read" in captured.err and str(bad) in captured.err and len(captured.out.splitlines()) == 1


def test_resume_with_changed_model_flag_is_refused(cli_run):
    _, _, out = cli_run
    with pytest.raises(ConfigMismatchError, match="embed_dim"):
        main(["train", "--resume", "--out-dir", out, "--embed-dim", "64", "--no-progress"])


def test_resume_of_a_finished_run_only_reevaluates(cli_run):
    _, _, out = cli_run
    before = os.path.getmtime(os.path.join(out, "split_00", "last.pt"))
    assert main(["train", "--resume", "--out-dir", out, "--no-progress", "--num-workers", "0"]) == 0
    assert os.path.getmtime(os.path.join(out, "split_00", "last.pt")) == before
    # --auto-resume finds the run (and resumes it), or starts a new one in an empty --out-dir.
    assert main(["train", "--auto-resume", "--out-dir", out, "--no-progress", "--num-workers", "0"]) == 0
    assert os.path.getmtime(os.path.join(out, "split_00", "last.pt")) == before
    with pytest.raises(SystemExit, match="--root and --csv are required"):
        main(["train", "--auto-resume", "--out-dir", os.path.join(out, "new")])


def test_train_needs_data():
    with pytest.raises(SystemExit, match="--root and --csv"):
        main(["train", "--arch", "tiny"])


def test_bench_quick_timing():
    from lmcl_fast.bench_quick import run_quick_bench

    text = run_quick_bench("cpu", repeats=1, B=2, N=2, H=64, S=32, D=16)
    for op in ("multi_crop", "spectral_residual", "crop_saliency", "lmc_loss", "train step"):
        assert op in text
    assert text.count(" ms") == 5


def test_demo_photo_lookup(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--photos"):
        demo.find_photos(str(tmp_path / "missing"))
    photos = tmp_path / "shared" / "data" / "photos"
    photos.mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert demo.find_photos(None) == str(photos)


def test_demo_without_photos_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "__file__", str(tmp_path / "pkg" / "lmcl_fast" / "demo.py"))
    with pytest.raises(SystemExit, match="no pristine photos found"):
        demo.find_photos(None)


def test_small_demo_runs(photos_dir, tmp_path, capsys):
    assert main(["demo", "--photos", photos_dir, "--out", str(tmp_path), "--max-images", "3", "--epochs", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "demo test split: SRCC" in out and "PLCC" in out
    assert os.path.isfile(tmp_path / "run" / "metrics.json")


def test_python_dash_m_entry_point():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "lmcl_fast", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("make-synthetic", "train", "eval", "predict", "bench", "demo"):
        assert cmd in res.stdout


def test_readme_config_table_matches_the_defaults():
    import dataclasses

    from lmcl_fast.core.config import TrainConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as fh:
        text = fh.read()
    table = text.split("<!-- config-table:begin -->")[1].split("<!-- config-table:end -->")[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1].strip("`")
    expected = {}
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        expected["--" + f.name.replace("_", "-")] = str(default)
    assert rows == expected


def test_metrics_json_is_strict(tmp_path):
    """A failed fit (NaN) is written as null: jq and JavaScript reject a bare NaN."""
    import math

    import numpy as np

    from lmcl_fast.eval.runner import write_result

    metrics = {"srcc": 0.5, "plcc_logistic": math.nan, "rmse": math.inf, "n": 3}
    write_result(str(tmp_path), {"metrics": metrics, "skipped": [], "names": ["a", "b", "c"],
                                 "mos": np.array([1.0, 2.0, 3.0]), "pred": np.array([1.0, 3.0, 2.0])}, "t")

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    with open(tmp_path / "metrics.json") as fh:
        data = json.loads(fh.read(), parse_constant=refuse)
    assert data["metrics"] == {"srcc": 0.5, "plcc_logistic": None, "rmse": None, "n": 3}
