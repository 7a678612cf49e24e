"""Held-out distortion types: the split trains on the other types only and tests on the held-out ones."""
import csv

import pytest

from lmcl_fast.data import IQADataset, random_splits
from lmcl_fast.data.holdout import holdout_split, row_types


def test_holdout_split_has_no_held_out_type_in_training(synthetic, tmp_path):
    root, csv_path = synthetic
    ds = IQADataset(root, csv_path)
    types = row_types(csv_path, ds.names)
    assert set(types) == {"", "jpeg", "blur", "noise", "contrast", "saturation"}
    # Without a type column the names say the same.
    with open(csv_path, newline="") as f:
        rows = [r[:3] for r in csv.reader(f)]
    bare = tmp_path / "bare.csv"
    with open(bare, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert row_types(str(bare), ds.names) == types
    for train_idx, test_idx in random_splits(ds.group_keys(), k=3, train_frac=0.5, seed=0):
        train, test = holdout_split(train_idx, test_idx, types, "noise, blur")
        assert train and test
        assert not {types[i] for i in train} & {"noise", "blur"}
        assert {types[i] for i in test} == {"", "noise", "blur"}
        assert set(train) <= set(train_idx.tolist()) and set(test) <= set(test_idx.tolist())
        refs = ds.group_keys()
        assert not {refs[i] for i in train} & {refs[i] for i in test}  # still content-aware


def test_holdout_split_rejects_unknown_types(synthetic):
    root, csv_path = synthetic
    ds = IQADataset(root, csv_path)
    types = row_types(csv_path, ds.names)
    (train_idx, test_idx), = random_splits(ds.group_keys(), k=1, seed=0)
    with pytest.raises(ValueError, match="holdout_types"):
        holdout_split(train_idx, test_idx, types, "gblur")
    with pytest.raises(ValueError, match="holdout_types"):
        holdout_split(train_idx, test_idx, types, "jpeg,blur,noise,contrast,saturation")
