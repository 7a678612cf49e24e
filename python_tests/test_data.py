"""lmcl_fast.data: CSV datasets, corrupt files, padded collate, the Pillow loader, sharding and order."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lmcl_fast.data import IQADataset, SkippedItem, collate_padded, make_loader

SIZES = [(12, 17), (20, 9), (7, 7), (16, 16), (9, 25), (14, 11)]


def write_images(root, sizes=SIZES, seed=0):
    """Random RGB PNGs of the given (H, W) sizes; returns their names."""
    rng = np.random.default_rng(seed)
    names = []
    for k, (h, w) in enumerate(sizes):
        name = f"img{k:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(os.path.join(root, name))
        names.append(name)
    return names


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(str(c) for c in r) + "\n")
    return str(path)


@pytest.fixture
def small_set(tmp_path):
    names = write_images(tmp_path)
    csv = write_csv(tmp_path / "labels.csv", ["name", "mos", "std"],
                    [(n, 10.0 * k + 1, 0.5 * k) for k, n in enumerate(names)])
    return IQADataset(tmp_path, csv)


@pytest.fixture
def corrupt_set(tmp_path):
    """Six good PNGs plus a truncated PNG, a garbage .jpg and a missing file."""
    names = write_images(tmp_path)
    good = (tmp_path / names[0]).read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    bad = ["truncated.png", "garbage.jpg", "missing.png"]
    rows = [(n, float(k)) for k, n in enumerate(names[:3] + bad + names[3:])]
    return IQADataset(tmp_path, write_csv(tmp_path / "labels.csv", ["name", "mos"], rows)), bad


def reference_image(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())


def test_csv_parsing_and_items(small_set, tmp_path):
    ds = small_set
    assert len(ds) == len(SIZES)
    assert ds.names == [f"img{k:02d}.png" for k in range(len(SIZES))]
    assert ds.mos.dtype == np.float64 and ds.mos.tolist() == [10.0 * k + 1 for k in range(len(SIZES))]
    assert ds.std.tolist() == [0.5 * k for k in range(len(SIZES))]
    item = ds[4]
    assert set(item) == {"image", "mos", "index", "name"}
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (9, 25, 3)
    assert torch.equal(item["image"], reference_image(tmp_path / "img04.png"))
    assert (item["mos"], item["index"], item["name"]) == (41.0, 4, "img04.png")


def test_grey_and_palette_images_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)).convert("P").save(tmp_path / "pal.png")
    ds = IQADataset(tmp_path, write_csv(tmp_path / "l.csv", ["name", "mos"], [("grey.png", 1), ("pal.png", 2)]))
    g = ds[0]["image"]
    assert g.shape == (6, 5, 3) and all(torch.equal(g[..., c], torch.from_numpy(grey)) for c in range(3))
    assert torch.equal(ds[1]["image"], reference_image(tmp_path / "pal.png"))


def test_header_aliases_and_no_std(tmp_path):
    names = write_images(tmp_path, SIZES[:2])
    ds = IQADataset(tmp_path, write_csv(tmp_path / "l.csv", ["image_name", "MOS"], [(names[0], 3), (names[1], 4)]))
    assert ds.std is None and ds.mos.tolist() == [3.0, 4.0]
    assert ds.group_keys() == names  # no ref column: every image is its own group


def test_lower_is_better_negates(tmp_path):
    names = write_images(tmp_path, SIZES[:3])
    csv = write_csv(tmp_path / "l.csv", ["name", "dmos"], [(n, k + 0.5) for k, n in enumerate(names)])
    assert IQADataset(tmp_path, csv, lower_is_better=True).mos.tolist() == [-0.5, -1.5, -2.5]
    assert IQADataset(tmp_path, csv).mos.tolist() == [0.5, 1.5, 2.5]


def test_bad_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="csv_path"):
        IQADataset(tmp_path, tmp_path / "nope.csv")
    cases = [  # (header, rows, message: names the file, the line and the column)
        (["file", "quality"], [("x.png", 1)], r"a\.csv, line 1: the header needs a column named one of \['name'"),
        (["name", "mos"], [("x.png", 1), ("y.png", "high")], r"a\.csv, line 3, column 'mos': not a number: 'high'"),
        (["name", "mos"], [("x.png", "nan")], r"a\.csv, line 2, column 'mos': must be finite"),
        (["name", "mos"], [("x.png", "inf")], r"a\.csv, line 2, column 'mos': must be finite"),
        (["name", "mos", "std"], [("x.png", 1, "wide")], r"a\.csv, line 2, column 'std': not a number"),
        (["name", "mos"], [("x.png", 1), ("z.png",)], r"a\.csv, line 3: column 'mos' is missing"),
        (["name", "mos"], [("x.png", 1), ("y.png", 2), ("x.png", 3)],
         r"a\.csv, line 4, column 'name': duplicate name 'x.png' \(first on line 2\)"),
        (["name", "mos"], [("/etc/passwd", 1)], r"a\.csv, line 2, column 'name': image name '/etc/passwd' is an "
                                                r"absolute path"),
        (["name", "mos"], [("x.png", 1), ("../../secret.png", 1)], r"a\.csv, line 3, column 'name': image name "
                                                                   r"'\.\./\.\./secret\.png' leaves the image root"),
        (["name", "mos"], [("imgs/../../x.png", 1)], r"line 2, column 'name'.*leaves the image root"),
        (["name", "mos"], [], r"a\.csv'? has a header but no rows"),
    ]
    for header, rows, message in cases:
        with pytest.raises(ValueError, match=message):
            IQADataset(tmp_path, write_csv(tmp_path / "a.csv", header, rows))
    ok = write_csv(tmp_path / "a.csv", ["name", "mos"], [("imgs/../x.png", 1), ("./y.png", 2)])
    assert IQADataset(tmp_path, ok).names == ["imgs/../x.png", "./y.png"]  # stays inside the root


def test_corrupt_files_reported_and_skipped(corrupt_set, caplog):
    ds, bad = corrupt_set
    with caplog.at_level(logging.WARNING, logger="lmcl_fast.data"):
        items = [ds[i] for i in range(len(ds))]
    skipped = [it for it in items if isinstance(it, SkippedItem)]
    assert [s.name for s in skipped] == bad and not any(skipped)
    for name in bad:
        assert name in caplog.text
    batch = collate_padded(items)
    assert batch["skipped"] == bad and len(batch["names"]) == batch["images"].shape[0] == len(ds) - len(bad)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_loop_iteration_completes(corrupt_set, num_workers):
    ds, bad = corrupt_set
    loader = make_loader(ds, 4, shuffle=True, seed=3, num_workers=num_workers, decoder="pillow")
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen, skipped, steps = [], [], 0
        for batch in loader:
            steps += 1
            if batch["images"].shape[0] == 0:
                continue
            seen += batch["names"]
            skipped += batch["skipped"]
            # the tensors a training step reads line up with the names
            assert batch["mos"].tolist() == [float(ds.mos[ds.names.index(n)]) for n in batch["names"]]
        assert steps == len(loader) == 3
        assert sorted(seen) == sorted(set(ds.names) - set(bad)) and sorted(skipped) == sorted(bad)


def test_collate_padding(small_set):
    items = [small_set[i] for i in (0, 1, 4)]
    batch = collate_padded(items)
    assert batch["images"].shape == (3, 20, 25, 3) and batch["images"].dtype == torch.uint8
    assert batch["heights"].tolist() == [12, 20, 9] and batch["widths"].tolist() == [17, 9, 25]
    assert batch["heights"].dtype == batch["widths"].dtype == batch["index"].dtype == torch.int64
    assert batch["mos"].dtype == torch.float32 and batch["mos"].tolist() == [1.0, 11.0, 41.0]
    assert batch["index"].tolist() == [0, 1, 4] and batch["names"] == ["img00.png", "img01.png", "img04.png"]
    assert batch["skipped"] == []
    for b, it in enumerate(items):
        h, w = it["image"].shape[:2]
        assert torch.equal(batch["images"][b, :h, :w], it["image"])
        assert not batch["images"][b, h:].any() and not batch["images"][b, :, w:].any()


def test_collate_all_skipped_gives_empty_batch():
    batch = collate_padded([SkippedItem("a.png", 0, "bad"), SkippedItem("b.png", 1, "bad")])
    assert batch["images"].shape == (0, 0, 0, 3) and batch["images"].dtype == torch.uint8
    assert batch["mos"].shape == batch["index"].shape == batch["heights"].shape == (0,)
    assert batch["names"] == [] and batch["skipped"] == ["a.png", "b.png"]


def test_sharding_two_ranks_cover_the_dataset_once(small_set):
    orders = []
    for rank in range(2):
        loader = make_loader(small_set, 2, shuffle=True, seed=7, num_workers=0, decoder="pillow",
                             rank=rank, world_size=2)
        loader.set_epoch(1)
        orders.append([i for b in loader for i in b["index"].tolist()])
        assert len(loader) == 2
    assert len(orders[0]) == len(orders[1]) == 3
    assert sorted(orders[0] + orders[1]) == list(range(len(small_set)))


def test_sharding_uneven_pads_by_repetition(small_set):
    ds = small_set.subset(range(5))
    orders = []
    for rank in range(2):
        loader = make_loader(ds, 2, shuffle=False, seed=0, num_workers=0, decoder="pillow", rank=rank, world_size=2)
        orders.append([i for b in loader for i in b["index"].tolist()])
    assert orders == [[0, 2, 4], [1, 3, 0]]  # every rank gets ceil(5 / 2) rows, as DistributedSampler


def test_same_seed_same_order_and_epochs_differ(small_set):
    def order(seed, epoch):
        loader = make_loader(small_set, 4, shuffle=True, seed=seed, num_workers=0, decoder="pillow")
        loader.set_epoch(epoch)
        return [i for b in loader for i in b["index"].tolist()]

    assert order(5, 0) == order(5, 0)
    assert order(5, 1) != order(5, 0)
    assert order(6, 0) != order(5, 0)
    assert sorted(order(5, 1)) == list(range(len(small_set)))
    unshuffled = make_loader(small_set, 4, shuffle=False, seed=5, num_workers=0, decoder="pillow")
    assert [i for b in unshuffled for i in b["index"].tolist()] == list(range(len(small_set)))


def test_len_and_drop_last(small_set):
    assert len(make_loader(small_set, 4, shuffle=False, seed=0, num_workers=0)) == 2
    loader = make_loader(small_set, 4, shuffle=False, seed=0, num_workers=0, drop_last=True)
    assert len(loader) == 1 and [b["images"].shape[0] for b in loader] == [4]


def test_auto_decoder_on_cpu_is_pillow(small_set):
    assert make_loader(small_set, 2, shuffle=False, seed=0, num_workers=0).decoder == "pillow"


def test_subset_and_group_keys(tmp_path):
    names = write_images(tmp_path, SIZES[:4])
    csv = write_csv(tmp_path / "l.csv", ["name", "mos", "ref"],
                    [(n, k, "A" if k < 2 else "B") for k, n in enumerate(names)])
    ds = IQADataset(tmp_path, csv)
    assert ds.group_keys() == ["A", "A", "B", "B"]
    sub = ds.subset(np.array([3, 0]))
    assert len(sub) == 2 and sub.names == [names[3], names[0]] and sub.mos.tolist() == [3.0, 0.0]
    assert sub.group_keys() == ["B", "A"] and sub.std is None
    item = sub[0]
    assert item["index"] == 0 and item["name"] == names[3]
    assert len(ds.subset(torch.tensor([1]))) == 1
    with pytest.raises(IndexError, match="indices"):
        ds.subset([4])


def test_make_loader_bad_arguments(small_set, monkeypatch):
    with pytest.raises(ValueError, match="decoder"):
        make_loader(small_set, 2, shuffle=False, seed=0, decoder="opencv")
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(small_set, 0, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="num_workers"):
        make_loader(small_set, 2, shuffle=False, seed=0, num_workers=-1)
    with pytest.raises(ValueError, match="rank"):
        make_loader(small_set, 2, shuffle=False, seed=0, rank=2, world_size=2)
    monkeypatch.setattr("lmcl_fast.data.loader.dali_available", lambda: False)
    with pytest.raises(RuntimeError, match="decoder='dali'"):
        make_loader(small_set, 2, shuffle=False, seed=0, decoder="dali")
