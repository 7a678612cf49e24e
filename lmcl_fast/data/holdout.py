"""Held-out distortion types: each row's distortion type, and a split that trains on some types and tests on
the others (plus the pristine images), so the test measures ranking of distortions the model never saw."""
from __future__ import annotations

import csv
import re

from .dataset import _NAME_COLUMNS

# A labels CSV may name each row's type in one of these columns (make-synthetic writes `type`).
TYPE_COLUMNS = ("type", "dist_type", "distortion")
# Else the type comes from make-synthetic's file names: <ref>__<type>_<level>.<ext>.
_NAME_PATTERN = re.compile(r"__([A-Za-z0-9]+)_(\d+)\.[A-Za-z0-9]+$")


def parse_holdout(text: str) -> tuple:
    """'a,b , c' -> ('a', 'b', 'c'); '' -> ()."""
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def row_types(csv_path: str, names: list) -> list:
    """The distortion type of every row of `names` ('' for a pristine image): the CSV's type column when it has
    one, else parsed from `<ref>__<type>_<level>` file names (a name without that pattern is pristine)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    header = [h.strip().lower() for h in rows[0]] if rows else []
    column = next((header.index(c) for c in TYPE_COLUMNS if c in header), None)
    name_col = next((header.index(c) for c in _NAME_COLUMNS if c in header), None)
    if column is not None and name_col is not None:
        by_name = {r[name_col].strip(): (r[column].strip() if column < len(r) else "") for r in rows[1:]}
        return [by_name.get(n, "") for n in names]
    types = []
    for n in names:
        m = _NAME_PATTERN.search(n)
        types.append(m.group(1) if m else "")
    return types


def holdout_split(train_idx, test_idx, types: list, holdout) -> tuple:
    """(train, test) index lists: training rows whose type is not held out; test rows whose type is held out
    or pristine (''). `holdout`: type names (a comma-separated string is accepted). Raises ValueError naming
    `holdout_types` for a type no row has, or when a part would be empty."""
    held = set(parse_holdout(holdout) if isinstance(holdout, str) else holdout)
    known = sorted({t for t in types if t})
    unknown = sorted(held - set(known))
    if unknown:
        raise ValueError(f"holdout_types: {unknown} are not distortion types of this dataset (it has {known})")
    train = [int(i) for i in train_idx if types[int(i)] not in held]
    test = [int(i) for i in test_idx if types[int(i)] in held or types[int(i)] == ""]
    n_train = sum(1 for i in train if types[i])
    n_test = sum(1 for i in test if types[i])
    if not n_train or not n_test:
        raise ValueError(f"holdout_types: holding out {sorted(held)} leaves {n_train} distorted training images "
                         f"and {n_test} held-out test images; both must be non-zero")
    return train, test
