"""lmcl prepare: each dataset's official label file format (CSV, text, .mat, .xlsx), written here in miniature,
becomes the project's CSV (read back by IQADataset); malformed rows name the file and line (row, entry)."""
import csv
import json
import os

import numpy as np
import pytest
from scipy.io import savemat

from lmcl_fast.cli import main
from lmcl_fast.data import IQADataset
from lmcl_fast.data.recipes import prepare

openpyxl = pytest.importorskip("openpyxl")


def _csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _xlsx(path, sheet, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = sheet
    ws.append(header)
    for r in rows:
        ws.append(r)
    book.save(path)


def _cells(strings, column=True):
    """A MATLAB cell array of strings as scipy writes and reads it."""
    arr = np.empty((len(strings), 1) if column else (1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        arr.flat[i] = np.array([s])
    return arr


def _read(out):
    with open(out, newline="") as fh:
        return list(csv.reader(fh))


def test_koniq10k_official_split(tmp_path):
    root = tmp_path / "koniq"
    _csv(str(root / "koniq10k_distributions_sets.csv"),
         ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"],
         [["a.jpg", 0, 1, 2, 3, 4, 10, 3.5, 0.6, "training"], ["b.jpg", 1, 1, 1, 1, 1, 5, 2.25, 0.9, "test"],
          ["c.jpg", 0, 0, 5, 0, 0, 5, 3.0, 0.1, "validation"]])
    out = str(tmp_path / "k.csv")
    rec = prepare("koniq10k", str(root), out)
    assert _read(out) == [["name", "mos", "std", "split"], ["1024x768/a.jpg", "3.5", "0.6", "train"],
                          ["1024x768/b.jpg", "2.25", "0.9", "test"], ["1024x768/c.jpg", "3", "0.1", "val"]]
    assert rec["split_counts"] == {"train": 1, "val": 1, "test": 1} and not rec["lower_is_better"]
    assert json.load(open(out + ".json"))["read"] == ["koniq10k_distributions_sets.csv"]
    prepare("koniq", str(root), str(tmp_path / "t.csv"), split="test")
    assert [r[0] for r in _read(str(tmp_path / "t.csv"))[1:]] == ["1024x768/b.jpg"]
    assert IQADataset(str(root), out).names[0] == "1024x768/a.jpg"
    _csv(str(root / "koniq10k_distributions_sets.csv"), ["image_name", "MOS", "SD", "set"],
         [["a.jpg", 3.5, 0.6, "training"], ["b.jpg", "high", 0.9, "test"]])
    with pytest.raises(ValueError, match=r"koniq10k_distributions_sets\.csv, line 3: MOS is not a number: 'high'"):
        prepare("koniq10k", str(root), out)
    _csv(str(root / "koniq10k_distributions_sets.csv"), ["image_name", "MOS", "SD", "set"], [["a.jpg", 3, 1, "x"]])
    with pytest.raises(ValueError, match=r"line 2: column 'set' must be one of"):
        prepare("koniq10k", str(root), out)


def test_spaq_xlsx(tmp_path):
    root = tmp_path / "spaq"
    path = str(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    _xlsx(path, "Sheet1", ["Image name", "MOS", "Brightness", "Colorfulness"],
          [["00001.png", 42.5, 50, 40], ["00002.png", 71, 60, 55]])
    out = str(tmp_path / "s.csv")
    prepare("spaq", str(root), out)
    assert _read(out) == [["name", "mos"], ["TestImage/00001.png", "42.5"], ["TestImage/00002.png", "71"]]
    _xlsx(path, "Sheet1", ["Image name", "MOS"], [["00001.png", 42.5], ["00002.png", None]])
    with pytest.raises(ValueError, match=r"scores\.xlsx, row 3: column 'MOS' is missing"):
        prepare("spaq", str(root), out)
    with pytest.raises(ValueError, match="no official split"):
        _xlsx(path, "Sheet1", ["Image name", "MOS"], [["00001.png", 42.5]])
        prepare("spaq", str(root), out, split="test")


def test_live_challenge_mat(tmp_path):
    root = tmp_path / "clive"
    (root / "Data").mkdir(parents=True)
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["10.bmp", "11.bmp"]
    savemat(str(root / "Data" / "AllImages_release.mat"), {"AllImages_release": _cells(names)})
    savemat(str(root / "Data" / "AllMOS_release.mat"), {"AllMOS_release": np.arange(9.0)[None] * 10})
    savemat(str(root / "Data" / "AllStdDev_release.mat"), {"AllStdDev_release": np.ones((1, 9))})
    out = str(tmp_path / "c.csv")
    prepare("livec", str(root), out)
    assert _read(out) == [["name", "mos", "std"], ["Images/10.bmp", "70", "1"], ["Images/11.bmp", "80", "1"]]
    mos = np.arange(9.0)[None]
    mos[0, 8] = np.nan
    savemat(str(root / "Data" / "AllMOS_release.mat"), {"AllMOS_release": mos})
    with pytest.raises(ValueError, match=r"AllMOS_release\.mat, entry 9: MOS must be finite"):
        prepare("clive", str(root), out)
    savemat(str(root / "Data" / "AllMOS_release.mat"), {"AllMOS_release": np.arange(8.0)[None]})
    with pytest.raises(ValueError, match="9 names but 8 MOS"):
        prepare("clive", str(root), out)


def test_kadid10k_csv(tmp_path):
    root = tmp_path / "kadid"
    _csv(str(root / "dmos.csv"), ["dist_img", "ref_img", "dmos", "var"],
         [["I01_01_01.png", "I01.png", 4.57, 0.25], ["I01_01_02.png", "I01.png", 4.33, 0.16]])
    out = str(tmp_path / "kd.csv")
    rec = prepare("kadid10k", str(root), out)
    assert _read(out) == [["name", "mos", "std", "ref"], ["images/I01_01_01.png", "4.57", "0.5", "I01.png"],
                          ["images/I01_01_02.png", "4.33", "0.4", "I01.png"]]
    assert not rec["lower_is_better"]  # KADID's "dmos" is quality-oriented
    _csv(str(root / "dmos.csv"), ["dist_img", "ref_img", "dmos"], [["I01_01_01.png", "I01.png", 4.57]])
    with pytest.raises(ValueError, match=r"dmos\.csv, line 1: the header needs a column 'var'"):
        prepare("kadid10k", str(root), out)
    _csv(str(root / "dmos.csv"), ["dist_img", "ref_img", "dmos", "var"], [["../../I01.png", "I01.png", 4.5, 0.1]])
    with pytest.raises(ValueError, match=r"dmos\.csv entry 1: image name 'images/\.\./\.\./I01\.png' leaves the image root"):
        prepare("kadid10k", str(root), out)


def test_tid2013_text(tmp_path):
    root = tmp_path / "tid"
    root.mkdir()
    (root / "mos_with_names.txt").write_text("5.51429 i01_01_1.bmp\n5.56757 i01_01_2.bmp\n4.9 i25_17_5.bmp\n")
    (root / "mos_std.txt").write_text("0.13\n0.11\n0.2\n")
    out = str(tmp_path / "t.csv")
    prepare("tid2013", str(root), out)
    rows = _read(out)
    assert rows[0] == ["name", "mos", "std", "ref"]
    assert rows[1] == ["distorted_images/i01_01_1.bmp", "5.51429", "0.13", "I01"] and rows[3][3] == "I25"
    (root / "mos_with_names.txt").write_text("5.51429 i01_01_1.bmp\n5.5 i01_01_2.bmp extra\n4.9 i25_17_5.bmp\n")
    with pytest.raises(ValueError, match=r"mos_with_names\.txt, line 2: expected `MOS name`"):
        prepare("tid2013", str(root), out)
    (root / "mos_with_names.txt").write_text("5.5 i01_01_1.bmp\n")
    with pytest.raises(ValueError, match=r"mos_std\.txt: 3 values for the 1 lines"):
        prepare("tid2013", str(root), out)


def test_live_release2_mat(tmp_path):
    root = tmp_path / "live"
    root.mkdir()
    n = 982
    dmos = np.linspace(0, 80, n)[None]
    orgs = np.zeros((1, n))
    orgs[0, [0, 300]] = 1  # reference copies: left out
    savemat(str(root / "dmos.mat"), {"dmos": dmos, "orgs": orgs})
    savemat(str(root / "refnames_all.mat"), {"refnames_all": _cells([f"ref{i % 29}.bmp" for i in range(n)],
                                                                    column=False)})
    out = str(tmp_path / "l.csv")
    rec = prepare("live", str(root), out)
    rows = _read(out)
    assert rec["lower_is_better"] and rows[0] == ["name", "dmos", "ref"] and len(rows) == 1 + n - 2
    assert rows[1] == ["jp2k/img2.bmp", f"{dmos[0, 1]:.6g}", "ref1"]
    assert rows[227] == ["jpeg/img1.bmp", f"{dmos[0, 227]:.6g}", "ref24"]  # entry 228 is jpeg/img1
    assert rows[-1][0] == "fastfading/img174.bmp"
    savemat(str(root / "dmos.mat"), {"dmos": dmos[:, :10], "orgs": orgs[:, :10]})
    with pytest.raises(ValueError, match=r"dmos\.mat: expected 982 entries"):
        prepare("live", str(root), out)
    savemat(str(root / "dmos.mat"), {"dmos_new": dmos})
    with pytest.raises(ValueError, match=r"dmos\.mat: no variable 'dmos'"):
        prepare("live", str(root), out)


def test_csiq_xlsx(tmp_path):
    root = tmp_path / "csiq"
    (root / "dst_imgs" / "awgn").mkdir(parents=True)
    (root / "dst_imgs" / "awgn" / "1600.AWGN.1.png").write_bytes(b"")
    header = ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]
    _xlsx(str(root / "csiq.DMOS.xlsx"), "all_by_image", header,
          [[1600, 1, "noise", 1, 0.061, 0.062], ["cactus", 3, "jpeg 2000", 2, 0.1, 0.25],
           ["fisher", 6, "contrast", 5, 0.05, 0.7]])
    out = str(tmp_path / "cs.csv")
    rec = prepare("csiq", str(root), out)
    assert rec["lower_is_better"]
    assert _read(out) == [["name", "dmos", "std", "ref"], ["dst_imgs/awgn/1600.AWGN.1.png", "0.062", "0.061", "1600"],
                          ["dst_imgs/jpeg2000/cactus.jpeg2000.2.png", "0.25", "0.1", "cactus"],
                          ["dst_imgs/contrast/fisher.contrast.5.png", "0.7", "0.05", "fisher"]]
    _xlsx(str(root / "csiq.DMOS.xlsx"), "all_by_image", header, [[1600, 1, "noise", 1, 0.06, 0.06],
                                                                 [1600, 1, "sharpen", 2, 0.1, 0.1]])
    with pytest.raises(ValueError, match=r"csiq\.DMOS\.xlsx, row 3: column 'dst_type' must be one of"):
        prepare("csiq", str(root), out)
    _xlsx(str(root / "csiq.DMOS.xlsx"), "Sheet1", header, [])
    with pytest.raises(ValueError, match="no sheet 'all_by_image'"):
        prepare("csiq", str(root), out)


def test_flive_csv_with_split(tmp_path):
    root = tmp_path / "database"
    _csv(str(root / "labels_image.csv"), ["name", "mos", "width", "height"],
         [["AVA__1.jpg", 70.1, 500, 400], ["voc/2.jpg", 60, 500, 375], ["blur/3.jpg", 55.5, 640, 480]])
    _csv(str(root / "labels640.csv"), ["name_image", "mos_image"], [["blur/3.jpg", 55.5]])
    _csv(str(root / "labels=640_padded.csv"), ["name_image", "mos_image", "is_valid"],
         [["AVA__1.jpg", 70.1, "False"], ["voc/2.jpg", 60, "True"]])
    out = str(tmp_path / "f.csv")
    assert main(["prepare", "flive", str(root), "--out", out]) == 0
    assert _read(out) == [["name", "mos", "split"], ["AVA__1.jpg", "70.1", "train"], ["voc/2.jpg", "60", "val"],
                          ["blur/3.jpg", "55.5", "test"]]
    _csv(str(root / "labels_image.csv"), ["name", "mos"], [["AVA__1.jpg", 70.1], ["AVA__1.jpg", 60]])
    with pytest.raises(ValueError, match="listed twice"):
        prepare("flive", str(root), out)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        prepare("imagenet", str(root), out)
    with pytest.raises(FileNotFoundError, match="labels_image.csv"):
        prepare("flive", str(tmp_path), out)
