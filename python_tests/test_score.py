"""`lmcl score`: file collection, scores equal to the metric's, unreadable files in the errors CSV, resume after
a kill, torchrun sharding with rank 0's merge; `lmcl export`; the plain-line progress for logs."""
import csv
import io
import os
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

import lmcl_fast
from lmcl_fast.cli import main
from lmcl_fast.core.progress import LineProgress
from lmcl_fast.score import collect_files, score_to_csv
from lmcl_testing import ROOT, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """root/a/*.png (5 sizes), root/b/c/*.jpg, a corrupt jpg, a non-image file, and a list file."""
    root = tmp_path_factory.mktemp("tree")
    g = torch.Generator().manual_seed(3)
    paths = []
    for i, (h, w) in enumerate([(40, 52), (36, 36), (64, 48), (50, 70), (33, 41)]):
        sub = root / ("a" if i < 3 else os.path.join("b", "c"))
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / (f"{i}.png" if i < 3 else f"{i}.jpg")
        Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()).save(p)
        paths.append(str(p))
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 10)
    (root / "a" / "notes.md").write_text("not an image")
    (root / "list.txt").write_text("# two files\na/1.png\n\nb/c/4.jpg\nmissing.png\n")
    return root, paths, tiny_checkpoint(root / "model.pt")


def test_collect_files(image_tree):
    root, paths, _ = image_tree
    files, missing = collect_files([str(root / "a"), str(root / "b"), str(root / "list.txt"), str(root / "nope")])
    assert files == paths[:3] + [str(root / "b" / "broken.jpg")] + paths[3:]  # sorted, recursive, deduplicated
    assert missing == [(str(root / "missing.png"), f"listed in {root / 'list.txt'} line 5: no such file"),
                       (str(root / "nope"), "no such file or folder")]


def test_scores_match_the_metric_and_errors_are_listed(image_tree, tmp_path):
    root, paths, ckpt = image_tree
    out = str(tmp_path / "scores.csv")
    rc = main(["score", str(root / "a"), str(root / "b"), str(root / "nope"), "--checkpoint", ckpt, "--out", out,
               "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0
    rows = _read(out)
    assert rows[0] == ["name", "mos"] and [r[0] for r in rows[1:]] == paths
    metric = lmcl_fast.load_metric(ckpt, "cpu")
    expected = metric.score_files(paths)
    got = torch.tensor([float(r[1]) for r in rows[1:]])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)  # written with 6 significant digits
    errors = _read(str(tmp_path / "scores.errors.csv"))
    assert errors[0] == ["name", "error"]
    assert {r[0] for r in errors[1:]} == {str(root / "b" / "broken.jpg"), str(root / "nope")}
    assert all(r[1] for r in errors[1:])  # a reason for each
    assert not [f for f in os.listdir(tmp_path) if ".part" in f]  # merged


def test_resume_skips_names_already_written(image_tree, tmp_path):
    root, paths, ckpt = image_tree
    metric = lmcl_fast.load_metric(ckpt, "cpu")
    out = str(tmp_path / "s.csv")
    # A run killed after its first batch: two rows in its part file, the last one cut mid-line.
    with open(out + ".part0", "w") as fh:
        fh.write(f"name,mos\n{paths[0]},1.5\n{paths[1]},2.")
    res = score_to_csv([str(root / "a"), str(root / "b")], metric, out, batch_size=2, num_workers=0,
                       progress=False)
    assert res["already_done"] == 1 and res["scored"] == 4 and res["failed"] == 1
    rows = _read(out)
    assert [r[0] for r in rows[1:]] == paths and rows[1][1] == "1.5"  # kept, not rescored
    again = score_to_csv([str(root / "a"), str(root / "b")], metric, out, batch_size=2, num_workers=0,
                         progress=False)
    assert again["scored"] == 0 and again["failed"] == 0 and _read(out) == rows
    with pytest.raises(ValueError, match="exists with the header"):
        dmos = lmcl_fast.load_metric(tiny_checkpoint(tmp_path / "d.pt", lower_is_better=True), "cpu")
        score_to_csv([str(root / "a")], dmos, out, num_workers=0, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ranks_share_and_merge(image_tree, tmp_path):
    root, paths, ckpt = image_tree
    out = str(tmp_path / "ddp.csv")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "lmcl_fast.cli", "score", str(root / "list.txt"), str(root / "a"), "--checkpoint", ckpt,
           "--out", out, "--device", "cpu", "--num-workers", "0", "--batch-size", "2", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = str(tmp_path / "one.csv")
    main(["score", str(root / "list.txt"), str(root / "a"), "--checkpoint", ckpt, "--out", single,
          "--device", "cpu", "--num-workers", "0", "--no-progress"])
    assert _read(out) == _read(single)  # same rows, same order, same values (bit-equal scores on the CPU)
    assert [r[0] for r in _read(out)[1:]] == [str(root / "a" / "1.png"), str(root / "b" / "c" / "4.jpg"),
                                              paths[0], paths[2]]
    assert [r[0] for r in _read(str(tmp_path / "ddp.errors.csv"))[1:]] == [str(root / "missing.png")]


def test_export_command(image_tree, tmp_path):
    _, paths, ckpt = image_tree
    out = str(tmp_path / "model.lmcl")
    assert main(["export", ckpt, out]) == 0
    assert torch.equal(lmcl_fast.load_metric(out, "cpu").score_files(paths[:2]),
                       lmcl_fast.load_metric(ckpt, "cpu").score_files(paths[:2]))


def test_line_progress_writes_plain_lines():
    sink = io.StringIO()
    bar = LineProgress(range(5), desc="score", unit="img", interval=0.0, file=sink)
    assert list(bar) == [0, 1, 2, 3, 4]
    bar.set_postfix(loss="0.5")
    bar.close()
    lines = sink.getvalue().splitlines()
    assert "\r" not in sink.getvalue() and len(lines) == 6
    assert lines[0].startswith("score: 1/5 img (20%), ") and lines[-1].startswith("score: 5/5 img (100%)")
    assert "done in" in lines[-1] and lines[-1].endswith("loss=0.5")
