"""Dataset recipes (`lmcl prepare`): the official label files of the standard IQA datasets -> this project's CSV
`name,mos|dmos[,std][,ref][,split]`, names relative to the dataset's root folder. Each reader takes the file as
the dataset's download ships it (CSV, text, MATLAB .mat via scipy, Excel .xlsx via openpyxl) and names the file
and line (or row / entry) of anything malformed."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field

from .dataset import check_relative


@dataclass
class Row:
    name: str
    score: float
    std: float = math.nan
    ref: str | None = None
    split: str | None = None


@dataclass
class Prepared:
    rows: list
    lower_is_better: bool
    sources: list  # label files read, relative to the root
    notes: list = field(default_factory=list)


def _fail(where: str, msg: str):
    raise ValueError(f"prepare: {where}: {msg}")


def _number(text, where: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        _fail(where, f"{what} is not a number: {text!r}")
    if not math.isfinite(value):
        _fail(where, f"{what} must be finite, got {text!r}")
    return value


def _need(root: str, *candidates: str) -> str:
    """The first candidate label file that exists under root (relative path), else FileNotFoundError."""
    for rel in candidates:
        if os.path.isfile(os.path.join(root, rel)):
            return rel
    raise FileNotFoundError(f"prepare: none of {list(candidates)} found under {root}")


def _csv_rows(path: str, required: tuple):
    """-> (column index by lower-cased name, [(line, row)]) of a CSV with a header; names the missing column."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [(i, r) for i, r in enumerate(csv.reader(fh), start=1) if r and any(c.strip() for c in r)]
    if not rows:
        _fail(path, "empty file")
    header = [h.strip().lower() for h in rows[0][1]]
    col = {h: i for i, h in enumerate(header)}
    for name in required:
        if name.lower() not in col:
            _fail(f"{path}, line {rows[0][0]}", f"the header needs a column {name!r}, got {rows[0][1]}")
    return col, rows[1:]


def _cell(row: list, i: int, where: str, what: str) -> str:
    if i >= len(row) or not row[i].strip():
        _fail(where, f"column {what!r} is missing or empty: {row}")
    return row[i].strip()


def _loadmat(path: str) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except Exception as exc:  # noqa: BLE001  (scipy raises several types for damaged files)
        raise ValueError(f"prepare: {path}: not a readable MATLAB file ({exc})") from None


def _mat_vector(mat: dict, key: str, path: str):
    """A 1 x N or N x 1 MATLAB array (numbers or a cell array of strings) as a flat list."""
    if key not in mat:
        _fail(path, f"no variable {key!r} (found {sorted(k for k in mat if not k.startswith('__'))})")
    value = mat[key]
    if value.ndim != 2 or min(value.shape) != 1:
        _fail(path, f"variable {key!r} must be a 1 x N or N x 1 array, got shape {value.shape}")
    flat = value.reshape(-1)
    if flat.dtype == object:  # a cell array: each cell holds a 1-element array of one string
        out = []
        for i, cell in enumerate(flat, start=1):
            items = cell.reshape(-1) if hasattr(cell, "reshape") else [cell]
            if len(items) != 1 or not isinstance(items[0], str):
                _fail(f"{path}, {key} entry {i}", f"expected one string, got {cell!r}")
            out.append(items[0])
        return out
    return flat.tolist()


def _xlsx_rows(path: str, sheet: str | None, required: tuple):
    """-> (column index by lower-cased name, [(row number, values)]) of an .xlsx sheet with a header row."""
    try:
        from openpyxl import load_workbook
    except ImportError:
        raise RuntimeError("prepare: reading .xlsx label files needs openpyxl: pip install 'lmcl_fast[xlsx]'") from None
    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001  (zip, XML and format errors of a damaged workbook)
        raise ValueError(f"prepare: {path}: not a readable .xlsx workbook ({exc})") from None
    if sheet is not None and sheet not in book.sheetnames:
        _fail(path, f"no sheet {sheet!r} (found {book.sheetnames})")
    ws = book[sheet] if sheet is not None else book.worksheets[0]
    rows = [(i, list(r)) for i, r in enumerate(ws.iter_rows(values_only=True), start=1)
            if any(v is not None and str(v).strip() for v in r)]
    book.close()
    if not rows:
        _fail(path, "empty sheet")
    header = [str(h).strip().lower() if h is not None else "" for h in rows[0][1]]
    col = {h: i for i, h in enumerate(header)}
    for name in required:
        if name.lower() not in col:
            _fail(f"{path}, row {rows[0][0]}", f"the header needs a column {name!r}, got {rows[0][1]}")
    return col, rows[1:]


def _xcell(values: list, i: int, where: str, what: str):
    v = values[i] if i < len(values) else None
    if v is None or (isinstance(v, str) and not v.strip()):
        _fail(where, f"column {what!r} is missing or empty")
    return v


def _name_str(v) -> str:
    """An Excel name cell: numbers stored as numbers (1600.0) become '1600'."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


# ------------------------------------------------------------------------------------------------ readers
def koniq10k(root: str) -> Prepared:
    """KonIQ-10k: koniq10k_distributions_sets.csv (official train/validation/test `set` column) when present,
    else koniq10k_scores_and_distributions.csv; columns image_name, MOS (1..5), SD. Images in 1024x768/ (or
    512x384/ when only that folder exists)."""
    rel = _need(root, "koniq10k_distributions_sets.csv", "koniq10k_scores_and_distributions.csv")
    path = os.path.join(root, rel)
    col, body = _csv_rows(path, ("image_name", "MOS", "SD"))
    folder = "512x384" if (os.path.isdir(os.path.join(root, "512x384"))
                           and not os.path.isdir(os.path.join(root, "1024x768"))) else "1024x768"
    splits = {"training": "train", "validation": "val", "test": "test"}
    rows = []
    for line, r in body:
        where = f"{path}, line {line}"
        split = None
        if "set" in col:
            s = _cell(r, col["set"], where, "set")
            if s not in splits:
                _fail(where, f"column 'set' must be one of {list(splits)}, got {s!r}")
            split = splits[s]
        rows.append(Row(f"{folder}/{_cell(r, col['image_name'], where, 'image_name')}",
                        _number(_cell(r, col["mos"], where, "MOS"), where, "MOS"),
                        _number(_cell(r, col["sd"], where, "SD"), where, "SD"), split=split))
    return Prepared(rows, False, [rel])


def spaq(root: str) -> Prepared:
    """SPAQ: Annotations/MOS and Image attribute scores.xlsx, columns `Image name`, `MOS` (0..100). Images in
    TestImage/. No official split."""
    rel = _need(root, os.path.join("Annotations", "MOS and Image attribute scores.xlsx"),
                "MOS and Image attribute scores.xlsx")
    path = os.path.join(root, rel)
    col, body = _xlsx_rows(path, None, ("Image name", "MOS"))
    rows = []
    for line, v in body:
        where = f"{path}, row {line}"
        rows.append(Row(f"TestImage/{_name_str(_xcell(v, col['image name'], where, 'Image name'))}",
                        _number(_xcell(v, col["mos"], where, "MOS"), where, "MOS")))
    return Prepared(rows, False, [rel])


def live_challenge(root: str) -> Prepared:
    """LIVE Challenge (CLIVE): Data/AllImages_release.mat, Data/AllMOS_release.mat, Data/AllStdDev_release.mat
    (1169 entries). The first 7 entries are the subjects' training images (Images/trainingImages) and are left
    out, as in the literature: 1162 images in Images/."""
    files = [os.path.join("Data", f"{v}.mat") for v in ("AllImages_release", "AllMOS_release", "AllStdDev_release")]
    for rel in files:
        _need(root, rel)
    names, mos, std = (_mat_vector(_loadmat(os.path.join(root, rel)), os.path.basename(rel)[:-4],
                                   os.path.join(root, rel)) for rel in files)
    if not len(names) == len(mos) == len(std):
        _fail(os.path.join(root, files[0]), f"{len(names)} names but {len(mos)} MOS and {len(std)} std values")
    rows = []
    for i in range(7, len(names)):
        where = f"{os.path.join(root, files[1])}, entry {i + 1}"
        rows.append(Row(f"Images/{names[i]}", _number(mos[i], where, "MOS"), _number(std[i], where, "std")))
    return Prepared(rows, False, files, ["the first 7 entries (training images) are left out"])


def kadid10k(root: str) -> Prepared:
    """KADID-10k: dmos.csv, columns dist_img, ref_img, dmos, var. Its `dmos` is quality-oriented (1..5, higher is
    better), so it is written as mos (std = sqrt(var)). Images (and references) in images/."""
    rel = _need(root, "dmos.csv")
    path = os.path.join(root, rel)
    col, body = _csv_rows(path, ("dist_img", "ref_img", "dmos", "var"))
    rows = []
    for line, r in body:
        where = f"{path}, line {line}"
        var = _number(_cell(r, col["var"], where, "var"), where, "var")
        if var < 0:
            _fail(where, f"column 'var' must be >= 0, got {var}")
        rows.append(Row(f"images/{_cell(r, col['dist_img'], where, 'dist_img')}",
                        _number(_cell(r, col["dmos"], where, "dmos"), where, "dmos"), math.sqrt(var),
                        _cell(r, col["ref_img"], where, "ref_img")))
    return Prepared(rows, False, [rel])


def tid2013(root: str) -> Prepared:
    """TID2013: mos_with_names.txt (`MOS name` per line, MOS 0..9) and, when present, mos_std.txt (one value per
    line, same order). Images in distorted_images/; the reference is I<nn> from the name (i01_02_3.bmp ->
    I01)."""
    rel = _need(root, "mos_with_names.txt")
    path = os.path.join(root, rel)
    stds = None
    sources = [rel]
    if os.path.isfile(os.path.join(root, "mos_std.txt")):
        sources.append("mos_std.txt")
        std_path = os.path.join(root, "mos_std.txt")
        with open(std_path, encoding="utf-8") as fh:
            stds = [(i, line.strip()) for i, line in enumerate(fh, start=1) if line.strip()]
    rows = []
    with open(path, encoding="utf-8") as fh:
        entries = [(i, line.split()) for i, line in enumerate(fh, start=1) if line.strip()]
    if stds is not None and len(stds) != len(entries):
        _fail(std_path, f"{len(stds)} values for the {len(entries)} lines of {path}")
    for k, (line, parts) in enumerate(entries):
        where = f"{path}, line {line}"
        if len(parts) != 2:
            _fail(where, f"expected `MOS name`, got {' '.join(parts)!r}")
        name = parts[1]
        if len(name) < 3 or not name[1:3].isdigit():
            _fail(where, f"image name {name!r} does not start with the reference number (e.g. i01_...)")
        std = math.nan
        if stds is not None:
            std = _number(stds[k][1], f"{std_path}, line {stds[k][0]}", "std")
        rows.append(Row(f"distorted_images/{name}", _number(parts[0], where, "MOS"), std, f"I{name[1:3]}"))
    return Prepared(rows, False, sources)


# LIVE release 2: the order of dmos.mat's 982 entries, folder by folder (as its readme lists them).
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def live(root: str) -> Prepared:
    """LIVE IQA release 2: dmos.mat (`dmos`, `orgs`: 1 marks a copy of a reference, left out) and
    refnames_all.mat (`refnames_all`), 982 entries in the folder order jp2k (227), jpeg (233), wn, gblur,
    fastfading (174 each), named img<k>.bmp. DMOS: lower is better."""
    mat_path = os.path.join(root, _need(root, "dmos.mat"))
    ref_path = os.path.join(root, _need(root, "refnames_all.mat"))
    mat = _loadmat(mat_path)
    dmos, orgs = _mat_vector(mat, "dmos", mat_path), _mat_vector(mat, "orgs", mat_path)
    refs = _mat_vector(_loadmat(ref_path), "refnames_all", ref_path)
    names = [f"{folder}/img{k}.bmp" for folder, count in LIVE_FOLDERS for k in range(1, count + 1)]
    if not len(dmos) == len(orgs) == len(refs) == len(names):
        _fail(mat_path, f"expected {len(names)} entries in dmos, orgs and refnames_all, got {len(dmos)}, "
                        f"{len(orgs)} and {len(refs)}")
    rows = [Row(names[i], _number(dmos[i], f"{mat_path}, dmos entry {i + 1}", "dmos"), ref=os.path.splitext(refs[i])[0])
            for i in range(len(names)) if not orgs[i]]
    return Prepared(rows, True, ["dmos.mat", "refnames_all.mat"], ["reference copies (orgs = 1) are left out"])


# CSIQ: dst_type in csiq.DMOS.xlsx -> (folder under dst_imgs/, the type's spelling in file names).
CSIQ_TYPES = {"noise": ("awgn", "AWGN"), "jpeg": ("jpeg", "JPEG"), "jpeg 2000": ("jpeg2000", "jpeg2000"),
              "f noise": ("fnoise", "fnoise"), "blur": ("blur", "BLUR"), "contrast": ("contrast", "contrast")}


def csiq(root: str) -> Prepared:
    """CSIQ: csiq.DMOS.xlsx, sheet all_by_image, columns image, dst_type, dst_lev, dmos_std, dmos (0..1, lower is
    better). Images dst_imgs/<type>/<image>.<TYPE>.<level>.png (the case of an existing file on disk wins);
    the reference is the image name."""
    rel = _need(root, "csiq.DMOS.xlsx")
    path = os.path.join(root, rel)
    col, body = _xlsx_rows(path, "all_by_image", ("image", "dst_type", "dst_lev", "dmos_std", "dmos"))
    on_disk: dict = {}
    rows = []
    for line, v in body:
        where = f"{path}, row {line}"
        image = _name_str(_xcell(v, col["image"], where, "image"))
        kind = str(_xcell(v, col["dst_type"], where, "dst_type")).strip().lower()
        if kind not in CSIQ_TYPES:
            _fail(where, f"column 'dst_type' must be one of {list(CSIQ_TYPES)}, got {kind!r}")
        level = _number(_xcell(v, col["dst_lev"], where, "dst_lev"), where, "dst_lev")
        if not level.is_integer() or level < 1:
            _fail(where, f"column 'dst_lev' must be a positive integer, got {level}")
        folder, spelled = CSIQ_TYPES[kind]
        name = f"{image}.{spelled}.{int(level)}.png"
        if folder not in on_disk:
            d = os.path.join(root, "dst_imgs", folder)
            on_disk[folder] = {f.lower(): f for f in os.listdir(d)} if os.path.isdir(d) else {}
        name = on_disk[folder].get(name.lower(), name)
        rows.append(Row(f"dst_imgs/{folder}/{name}", _number(_xcell(v, col["dmos"], where, "dmos"), where, "dmos"),
                        _number(_xcell(v, col["dmos_std"], where, "dmos_std"), where, "dmos_std"), image))
    return Prepared(rows, True, [rel])


def flive(root: str) -> Prepared:
    """FLIVE (PaQ-2-PiQ), ROOT = its database/ folder: labels_image.csv, columns name, mos (images under ROOT by
    that name). The official split, when its files are present: labels640.csv lists the test images and
    labels=640_padded.csv the rest with is_valid (True: validation); column name_image."""
    rel = _need(root, "labels_image.csv")
    path = os.path.join(root, rel)
    col, body = _csv_rows(path, ("name", "mos"))
    split_of: dict = {}
    sources = [rel]
    test_file, train_file = os.path.join(root, "labels640.csv"), os.path.join(root, "labels=640_padded.csv")
    if os.path.isfile(test_file) and os.path.isfile(train_file):
        sources += ["labels640.csv", "labels=640_padded.csv"]
        tcol, trows = _csv_rows(test_file, ("name_image",))
        for line, r in trows:
            split_of[_cell(r, tcol["name_image"], f"{test_file}, line {line}", "name_image")] = "test"
        vcol, vrows = _csv_rows(train_file, ("name_image", "is_valid"))
        for line, r in vrows:
            where = f"{train_file}, line {line}"
            flag = _cell(r, vcol["is_valid"], where, "is_valid").lower()
            if flag not in ("true", "false", "1", "0"):
                _fail(where, f"column 'is_valid' must be True or False, got {flag!r}")
            split_of.setdefault(_cell(r, vcol["name_image"], where, "name_image"),
                                "val" if flag in ("true", "1") else "train")
    rows = []
    for line, r in body:
        where = f"{path}, line {line}"
        name = _cell(r, col["name"], where, "name")
        split = (split_of.get(name, "train")) if split_of else None
        rows.append(Row(name, _number(_cell(r, col["mos"], where, "mos"), where, "mos"), split=split))
    return Prepared(rows, False, sources)


RECIPES = {"koniq10k": koniq10k, "spaq": spaq, "livec": live_challenge, "kadid10k": kadid10k,
           "tid2013": tid2013, "live": live, "csiq": csiq, "flive": flive}
ALIASES = {"koniq": "koniq10k", "clive": "livec", "live-challenge": "livec", "kadid": "kadid10k", "tid": "tid2013",
           "paq2piq": "flive", "live2": "live"}


def prepare(name: str, root: str, out: str, split: str | None = None) -> dict:
    """Read dataset `name`'s label files under `root` and write `out` (CSV name,mos|dmos[,std][,ref][,split]) and
    `out`.json (what was read, lower_is_better, counts). With `split` (train/val/test), only that part of the
    official split. Returns the JSON record."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in RECIPES:
        raise ValueError(f"prepare: unknown dataset {name!r}; one of {sorted(RECIPES)}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"prepare: dataset root {root} is not a folder")
    prep = RECIPES[key](root)
    seen: dict = {}
    for i, r in enumerate(prep.rows):
        check_relative(r.name, f"{prep.sources[0]} entry {i + 1}")
        if r.name in seen:
            raise ValueError(f"prepare: {prep.sources[0]}: image {r.name!r} listed twice (entries {seen[r.name]} "
                             f"and {i + 1})")
        seen[r.name] = i + 1
    has_split = any(r.split for r in prep.rows)
    if split is not None:
        if not has_split:
            raise ValueError(f"prepare: {key} has no official split (--split {split}); train with random "
                             f"content-aware splits instead")
        prep.rows = [r for r in prep.rows if r.split == split]
    has_std = any(not math.isnan(r.std) for r in prep.rows)
    has_ref = any(r.ref for r in prep.rows)
    header = ["name", "dmos" if prep.lower_is_better else "mos"] + ["std"] * has_std + ["ref"] * has_ref \
        + ["split"] * has_split
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in prep.rows:
            w.writerow([r.name, f"{r.score:.6g}"] + [f"{r.std:.6g}" if not math.isnan(r.std) else ""] * has_std
                       + [r.ref] * has_ref + [r.split] * has_split)
    os.replace(tmp, out)
    record = {"dataset": key, "root": os.path.abspath(root), "csv": os.path.abspath(out), "read": prep.sources,
              "lower_is_better": prep.lower_is_better, "rows": len(prep.rows), "notes": prep.notes}
    if has_split:
        record["split_counts"] = {s: sum(r.split == s for r in prep.rows) for s in ("train", "val", "test")}
    with open(f"{out}.json", "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    return record
