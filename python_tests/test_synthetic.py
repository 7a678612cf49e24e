"""lmcl_fast.data.make_synthetic: files, labels, the score rule, determinism."""
import csv
import hashlib
import os
from collections import defaultdict

import pytest
from PIL import Image

from lmcl_fast.data import IQADataset, make_synthetic, synthetic_mos
from lmcl_fast.data.distortions import BASIC

SIZE = 40  # short side of the resized photos: keeps the test fast


def read_rows(csv_path):
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def digest(root, rows):
    return {r["name"]: hashlib.sha256((root / r["name"]).read_bytes()).hexdigest() for r in rows}


@pytest.fixture(scope="module")
def synthetic(photos_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return out, make_synthetic(photos_dir, out, levels=5, seed=0, max_images=2, size=SIZE)


def test_files_and_csv(synthetic):
    out, csv_path = synthetic
    assert csv_path == os.path.join(str(out), "labels.csv")
    rows = read_rows(csv_path)
    assert list(rows[0]) == ["name", "mos", "ref", "type", "level"]
    assert len(rows) == 2 * (1 + len(BASIC) * 5)
    assert len({r["ref"] for r in rows}) == 2
    for r in rows:
        path = out / r["name"]
        assert path.is_file()
        with Image.open(path) as im:
            assert min(im.size) == SIZE and im.mode == "RGB"
            assert im.format == ("JPEG" if "__jpeg_" in r["name"] else "PNG")
    ds = IQADataset(out, csv_path)
    assert ds.group_keys() == [r["ref"] for r in rows]
    assert ds[1]["image"].shape[2] == 3


def test_scores_fall_with_level(synthetic):
    _, csv_path = synthetic
    by_type = defaultdict(dict)
    pristine = {}
    for r in read_rows(csv_path):
        stem = os.path.splitext(os.path.basename(r["name"]))[0]
        if "__" not in stem:
            pristine[r["ref"]] = float(r["mos"])
            continue
        kind, level = stem.split("__")[1].rsplit("_", 1)
        by_type[(r["ref"], kind)][int(level)] = float(r["mos"])
    assert set(pristine.values()) == {100.0}
    assert len(by_type) == 2 * len(BASIC)
    weights = {d.name: d.weight for d in BASIC}
    for (ref, kind), scores in by_type.items():
        levels = sorted(scores)
        assert levels == [1, 2, 3, 4, 5]
        values = [scores[lv] for lv in levels]
        assert all(a > b for a, b in zip([pristine[ref]] + values, values)), (ref, kind, values)
        assert values == pytest.approx([synthetic_mos(weights[kind], lv, 5) for lv in levels])


def test_deterministic_for_a_seed(photos_dir, synthetic, tmp_path):
    out, csv_path = synthetic
    rows = read_rows(csv_path)
    again = make_synthetic(photos_dir, tmp_path / "again", levels=5, seed=0, max_images=2, size=SIZE)
    assert open(again).read() == open(csv_path).read()
    assert digest(tmp_path / "again", rows) == digest(out, rows)
    other = make_synthetic(photos_dir, tmp_path / "other", levels=5, seed=1, max_images=2, size=SIZE)
    a, b = digest(out, rows), digest(tmp_path / "other", read_rows(other))
    differ = {n for n in a if a[n] != b[n]}
    assert differ == {r["name"] for r in rows if "__noise_" in r["name"]}  # only the noise draws use the seed


def test_levels_argument(photos_dir, tmp_path):
    rows = read_rows(make_synthetic(photos_dir, tmp_path, levels=2, max_images=1, size=16))
    assert len(rows) == 1 + len(BASIC) * 2
    assert sorted({float(r["mos"]) for r in rows if "__blur_" in r["name"]}) == pytest.approx(
        [synthetic_mos(BASIC[1].weight, lv, 2) for lv in (2, 1)])


def test_bad_arguments(photos_dir, tmp_path):
    with pytest.raises(ValueError, match="levels"):
        make_synthetic(photos_dir, tmp_path, levels=0)
    with pytest.raises(ValueError, match="max_images"):
        make_synthetic(photos_dir, tmp_path, max_images=0)
    with pytest.raises(ValueError, match="size"):
        make_synthetic(photos_dir, tmp_path, size=2)
    with pytest.raises(FileNotFoundError, match="src"):
        make_synthetic(tmp_path / "nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="src"):
        make_synthetic(tmp_path / "empty", tmp_path / "o")
