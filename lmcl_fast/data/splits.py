"""Random content-aware train/test splits of a dataset (all images of one reference content on one side)."""
from __future__ import annotations

import numpy as np


def random_splits(n_or_groups, k: int = 10, train_frac: float = 0.8, seed: int = 0) -> list:
    """`k` random train/test splits -> [(train_idx, test_idx)] (sorted int64 numpy arrays).

    `n_or_groups`: an int n (each image is its own group), or one group key per image (e.g.
    `IQADataset.group_keys()`): then the split is content-aware, i.e. all images of a key land on the same side,
    and `train_frac` is the fraction of keys that go to train (round(train_frac * G), at least 1 on each side).
    Split i draws its permutation from numpy's default_rng((seed, i)): same seed, same splits.
    """
    if isinstance(n_or_groups, (int, np.integer)):
        n = int(n_or_groups)
        groups = np.arange(n)
    else:
        groups = list(n_or_groups)
        n = len(groups)
    if int(k) < 1:
        raise ValueError(f"random_splits: k must be >= 1, got {k}")
    if not 0.0 < float(train_frac) < 1.0:
        raise ValueError(f"random_splits: train_frac must lie in (0, 1), got {train_frac}")
    keys = list(dict.fromkeys(groups))  # unique, in order of first appearance
    if len(keys) < 2:
        raise ValueError(f"random_splits: n_or_groups needs at least 2 distinct groups, got {len(keys)}")
    code = {key: j for j, key in enumerate(keys)}
    group_of = np.fromiter((code[g] for g in groups), dtype=np.int64, count=n)
    n_train = min(max(int(round(float(train_frac) * len(keys))), 1), len(keys) - 1)
    splits = []
    for i in range(int(k)):
        perm = np.random.default_rng((int(seed), i)).permutation(len(keys))
        in_train = np.zeros(len(keys), dtype=bool)
        in_train[perm[:n_train]] = True
        mask = in_train[group_of]
        splits.append((np.flatnonzero(mask).astype(np.int64), np.flatnonzero(~mask).astype(np.int64)))
    return splits
