"""Data loaders over an `IQADataset`: a Pillow DataLoader path and an NVIDIA DALI path with the same order.

Both paths yield the `collate_padded` dict and visit the rows in exactly the order of
`torch.utils.data.DistributedSampler(dataset, world_size, rank, shuffle, seed, drop_last)` at the current
epoch (seeded permutation of `seed + epoch`; every rank gets the same count), so a trainer sees identical
batches whichever decoder runs. An epoch can start at any row of its order (a resume, on any number of
processes).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .collate import collate_padded, pad_images
from .dataset import check_image_bytes

log = logging.getLogger("lmcl_fast.data")

DECODERS = ("auto", "pillow", "dali")


def dali_available() -> bool:
    """True when NVIDIA DALI (`nvidia-dali-cuda130`, the `dali` extra) imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; a host tensor goes to a CUDA device through pinned memory with a non-blocking copy,
    so the host never waits for the GPU's queue (a copy from pageable memory may)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def _batch_to(batch: dict, device: torch.device) -> dict:
    """The images on `device`; the per-image values (heights, widths, mos, index) stay on the host, where box
    sampling and crop seeds read them: on CUDA, reading them back would wait for the GPU's queue."""
    if device.type == "cpu":
        return batch
    out = dict(batch)
    out["images"] = to_device(batch["images"], device)
    if device.type == "cuda":  # pinned: the trainer's non-blocking copy of mos is then truly asynchronous
        out["mos"] = batch["mos"] if batch["mos"].is_pinned() else batch["mos"].pin_memory()
    return out


class _ShardSampler(Sampler):
    """DistributedSampler's order, sharding and padding (`torch.utils.data.DistributedSampler(dataset,
    num_replicas, rank, shuffle, seed, drop_last)` yields the same rows), started at a row of the epoch.

    Rank r's i-th row is order[start + r + i * num_replicas]: the k-th batches of all ranks together are rows
    [start + k*G, start + (k+1)*G) of the epoch's order (G = num_replicas x batch size). `start` counts the rows
    of the whole epoch already consumed, so a run resumed mid-epoch, on any number of processes, goes on at
    the same row of the same permutation (nothing read twice, nothing skipped). drop_last: every rank gets
    floor(rows left / num_replicas) rows (nothing repeated); otherwise ceil(...), padded by repetition."""

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool):
        self.n = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> list:
        """Every row, in the epoch's order (the permutation of DistributedSampler: seeded with seed + epoch)."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def rows_per_rank(self, start: int = 0) -> int:
        left, W = self.n - start, self.num_replicas
        return left // W if self.drop_last else math.ceil(left / W)

    def __len__(self) -> int:
        return self.rows_per_rank(self.start)

    def __iter__(self):
        order = self.epoch_order()[self.start:]
        W = self.num_replicas
        if self.drop_last:
            order = order[: len(order) // W * W]
        elif order and len(order) % W:
            pad = W - len(order) % W
            order += (order * math.ceil(pad / len(order)))[:pad]
        return iter(order[self.rank::W])


class _Loader:
    """Shared sampler, length and epoch logic of both decoders."""

    def __init__(self, dataset, batch_size, shuffle, seed, device, rank, world_size, drop_last):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.drop_last = drop_last
        self.world_size = world_size
        # Sharded without padding when incomplete batches are dropped anyway: no row is read twice.
        self.sampler = _ShardSampler(dataset, world_size, rank, shuffle, seed, drop_last)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Pick the epoch's shuffle (the permutation is seeded with seed + epoch, as DistributedSampler does)
        and start at row `start` of it: the rows the whole run (all ranks) consumed before, e.g. a resume
        from a mid-epoch checkpoint, on this or another number of processes."""
        if not 0 <= int(start) <= len(self.dataset):
            raise ValueError(f"set_epoch: start must lie in [0, {len(self.dataset)}] (rows of the epoch), "
                             f"got {start}")
        self.sampler.set_epoch(epoch)
        self.sampler.start = int(start)

    def batches(self, start: int = 0) -> int:
        """Batches this rank yields in an epoch started at row `start` (see set_epoch)."""
        n = self.sampler.rows_per_rank(start)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        """Batches per full epoch on this rank."""
        return self.batches(0)


class PillowLoader(_Loader):
    """torch DataLoader with Pillow decoding in `num_workers` processes; images moved to `device` (pinned
    memory and non-blocking copies on CUDA), the per-image values kept on the host."""

    decoder = "pillow"

    def __init__(self, dataset, batch_size, shuffle, seed, num_workers, device, rank, world_size, drop_last,
                 host_batches=False):
        super().__init__(dataset, batch_size, shuffle, seed, device, rank, world_size, drop_last)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 collate_fn=collate_padded, pin_memory=device.type == "cuda", drop_last=drop_last,
                                 persistent_workers=num_workers > 0)
        self.target = torch.device("cpu") if host_batches else device

    def __iter__(self):
        for batch in self.loader:
            yield _batch_to(batch, self.target)


# File signatures of the formats DALI's image decoder reads. Bytes that match none of them are reported as
# unreadable on the host, before they can reach (and invalidate) the pipeline.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM", b"\xff\x4f\xff\x51",
               b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")


def _known_format(data: np.ndarray) -> bool:
    head = data[:16].tobytes()
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(sig) for sig in _SIGNATURES)


class DaliLoader(_Loader):
    """NVIDIA DALI decoding: file bytes read on the host (in the sampler's order) -> `fn.decoders.image`
    (`device="mixed"`, nvJPEG on the GPU, when `device` is CUDA; `"cpu"` otherwise) -> `fn.pad` to the batch's
    largest image (zeros at the bottom/right) -> copied into a torch tensor on `device` with `feed_ndarray`
    (device to device on CUDA: no host round trip).

    Corrupt files: bytes of an unknown format are skipped on the host; a decode error fails a DALI pipeline
    for good, so the batch is then rebuilt sample by sample on a fresh pipeline and the failing files are
    reported by name and skipped, as on the Pillow path.
    """

    decoder = "dali"

    def __init__(self, dataset, batch_size, shuffle, seed, num_workers, device, rank, world_size, drop_last,
                 host_batches=False):
        super().__init__(dataset, batch_size, shuffle, seed, device, rank, world_size, drop_last)
        self.meta_device = torch.device("cpu") if host_batches else device
        self.num_threads = max(1, num_workers)
        if device.type == "cuda":
            self.device_id = device.index if device.index is not None else torch.cuda.current_device()
        else:
            self.device_id = None
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            from nvidia.dali import fn, pipeline_def, types

            on_gpu = self.device_id is not None

            @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                          exec_pipelined=False, exec_async=False)
            def decode():
                raw = fn.external_source(name="raw", dtype=types.UINT8, no_copy=False)
                # jpeg_fancy_upsampling: the chroma upsampling libjpeg (and so Pillow) uses by default.
                images = fn.decoders.image(raw, device="mixed" if on_gpu else "cpu", output_type=types.RGB,
                                           jpeg_fancy_upsampling=True)
                return images, fn.pad(images, axes=(0, 1), fill_value=0)

            self._pipe = decode()
            self._pipe.build()
        return self._pipe

    def _decode(self, data: list):
        """Run the pipeline on a list of byte arrays -> (images on self.device, heights, widths)."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        pipe = self._pipeline()
        pipe.feed_input("raw", data)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        images, padded = pipe.run(stream)  # outputs ready in the order of torch's current stream
        dense = padded.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(dense, out, cuda_stream=stream)
        shapes = images.shape()
        heights = torch.tensor([s[0] for s in shapes], dtype=torch.int64)
        widths = torch.tensor([s[1] for s in shapes], dtype=torch.int64)
        return out, heights, widths

    def _skip(self, skipped: list, i: int, reason: str) -> None:
        """skipped: (name, reason) pairs."""
        name = self.dataset.names[i]
        log.warning("skipping unreadable image %s: %s", name, reason)
        skipped.append((name, reason))

    def _batch(self, indices: list) -> dict:
        kept, data, skipped = [], [], []
        for i in indices:
            try:
                raw = np.fromfile(self.dataset.path(i), dtype=np.uint8)
            except OSError as e:
                self._skip(skipped, i, str(e))
                continue
            if not _known_format(raw):
                self._skip(skipped, i, "not a known image format")
                continue
            try:
                check_image_bytes(raw)  # bad PNG CRCs and decompression bombs, before DALI allocates anything
            except ValueError as e:
                self._skip(skipped, i, str(e))
                continue
            kept.append(i)
            data.append(raw)
        if not kept:
            images, heights, widths = pad_images([])
        else:
            try:
                images, heights, widths = self._decode(data)
            except RuntimeError:
                self._pipe = None  # a failed DALI pipeline is no longer valid
                images, heights, widths, kept = self._decode_one_by_one(kept, data, skipped)
        rows = np.asarray(kept, dtype=np.int64)
        meta = _batch_to(dict(
            heights=heights,
            widths=widths,
            mos=torch.from_numpy(self.dataset.mos[rows].astype(np.float32)),
            index=torch.from_numpy(rows),
            names=[self.dataset.names[i] for i in kept],
            skipped=[name for name, _ in skipped],
            skip_reasons=[reason for _, reason in skipped],
        ), self.meta_device)
        return dict(images=images.to(self.device), **meta)

    def _decode_one_by_one(self, kept: list, data: list, skipped: list):
        good_rows, good_images = [], []
        for i, raw in zip(kept, data):
            try:
                image, _, _ = self._decode([raw])
            except RuntimeError as e:
                self._pipe = None
                self._skip(skipped, i, str(e).strip().splitlines()[-1] if str(e).strip() else "decode failed")
                continue
            good_rows.append(i)
            good_images.append(image[0])
        images, heights, widths = pad_images(good_images)
        return images.to(self.device), heights, widths, good_rows

    def __iter__(self):
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            yield self._batch(chunk)


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 2, decoder: str = "auto",
                device="cpu", rank: int = 0, world_size: int = 1, drop_last: bool = False, host_batches: bool = False):
    """An iterable over `collate_padded` batches of `dataset`, with `len()` (batches per epoch on this rank) and
    `set_epoch(epoch, start=0)`.

    decoder: "pillow" (torch DataLoader, Pillow in `num_workers` processes), "dali" (NVIDIA DALI with
    `num_workers` decoder threads; GPU decoding when `device` is CUDA), "auto" (DALI when it is importable and
    `device` is CUDA, else Pillow). Rows are sharded by `rank`/`world_size` and shuffled per epoch exactly as
    DistributedSampler does: every rank gets ceil(len / world_size) rows, the first few repeated when the
    length does not divide, or with `drop_last` floor(len / world_size) rows, none repeated, and only whole
    batches. A batch's images are on `device`; its heights, widths, mos and index stay on the host (pinned
    on CUDA), where the box sampler and the trainer read them without waiting for the GPU. With
    `host_batches` the images stay in host memory too (pinned when `device` is CUDA) for the caller to copy,
    except DALI's images, decoded on `device`. Unreadable files are listed by name in the batch's `skipped`
    (the reasons in `skip_reasons`) and left out of it (B may be 0).
    """
    if decoder not in DECODERS:
        raise ValueError(f"make_loader: decoder must be one of {DECODERS}, got {decoder!r}")
    if int(batch_size) < 1:
        raise ValueError(f"make_loader: batch_size must be >= 1, got {batch_size}")
    if int(num_workers) < 0:
        raise ValueError(f"make_loader: num_workers must be >= 0, got {num_workers}")
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise ValueError(f"make_loader: rank must lie in [0, world_size) with world_size >= 1, "
                         f"got rank={rank}, world_size={world_size}")
    device = torch.device(device)
    if decoder == "auto":
        decoder = "dali" if device.type == "cuda" and dali_available() else "pillow"
    if decoder == "dali" and not dali_available():
        raise RuntimeError("make_loader: decoder='dali' needs NVIDIA DALI: pip install 'lmcl_fast[dali]' "
                           "(nvidia-dali-cuda130)")
    cls = DaliLoader if decoder == "dali" else PillowLoader
    return cls(dataset, int(batch_size), bool(shuffle), int(seed), int(num_workers), device, int(rank),
               int(world_size), bool(drop_last), host_batches=bool(host_batches))
