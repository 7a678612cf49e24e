"""A CUDA training step enqueues work only: no .item(), .cpu(), .tolist() or value check that waits for the
GPU. The batch's per-image values stay on the host (checked here on any machine); three training steps run
under torch.cuda.set_sync_debug_mode("error") (needs a GPU)."""
import pytest
import torch

from lmcl_fast.data import IQADataset, random_splits
from lmcl_fast.data.loader import _batch_to
from lmcl_fast.train import Trainer, TrainConfig
from lmcl_fast.train.trainer import common_batch, crop_seed


def test_loader_moves_only_the_images():
    """Box sampling and crop seeds read heights, widths and index on the host: the loader leaves them (and
    mos) there and moves the images alone ("meta" stands in for a GPU here)."""
    batch = dict(images=torch.zeros(2, 5, 6, 3, dtype=torch.uint8), heights=torch.tensor([5, 4]),
                 widths=torch.tensor([6, 6]), mos=torch.tensor([1.0, 2.0]), index=torch.tensor([3, 7]),
                 names=["a", "b"], skipped=[])
    moved = _batch_to(batch, torch.device("meta"))
    assert moved["images"].device.type == "meta"
    for key in ("heights", "widths", "mos", "index"):
        assert moved[key] is batch[key]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mutual, amp", [("peer", "auto"), ("ema", "auto"), ("peer", "fp16")])
def test_cuda_training_steps_never_wait_for_the_host(synthetic, tmp_path, mutual, amp):
    # fp16: GradScaler hands its inf/NaN flag to the fused AdamW instead of reading it on the host.
    root, csv_path = synthetic
    cfg = TrainConfig(root=root, csv=csv_path, out_dir=str(tmp_path), arch="tiny", crop_size=32, n_crops=3,
                      min_crop=16, batch_size=8, epochs=1, splits=1, num_workers=0, decoder="pillow",
                      log_every=1000, device="cuda", seed=0, mutual=mutual, amp=amp)
    ds = IQADataset(cfg.root, cfg.csv)
    train_idx, test_idx = random_splits(ds.group_keys(), k=1, train_frac=cfg.train_frac, seed=cfg.split_seed)[0]
    trainer = Trainer(cfg, ds, train_idx, test_idx, str(tmp_path / "run"), progress=False)
    trainer.loader.set_epoch(0)
    batches = iter(trainer.loader)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):  # Trainer.fit's per-batch work, the first step (lazy initialisations) included
            batch = common_batch(next(batches), trainer.dist)
            trainer.train_step(batch, [crop_seed(cfg.seed, 0, i) for i in batch["index"].tolist()])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.step == 3
    assert torch.isfinite(trainer._sums).all() and not trainer._nonfinite.item()
