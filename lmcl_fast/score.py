"""Batch scoring of image files (`lmcl score`): files, folders (recursive) and list files -> one CSV of scores,
decoded by the project's loaders (DALI on CUDA, Pillow workers otherwise), batched, resumable, sharded over the
ranks of a torchrun launch and merged by rank 0. Unreadable files go to a second CSV with the reason."""
from __future__ import annotations

import csv
import glob
import os
import sys

import torch

from .core.dist import DistContext, resolve_device
from .core.metric import QualityMetric, load_metric
from .core.progress import progress_bar
from .data import IQADataset, make_loader

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".jp2")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
ERROR_HEADER = ["name", "error"]


def collect_files(paths: list) -> tuple:
    """-> (files, missing): image files found under `paths` in a stable order, and [(path, reason)] for
    arguments or list entries that do not exist. A folder is searched recursively for image extensions
    (sorted); a .txt/.lst/.list file holds one path per line (relative paths are relative to the list file's
    folder; blank lines and lines starting with # are skipped); any other file is scored as given."""
    files, missing, seen = [], [], set()

    def add(path):
        if path not in seen:
            seen.add(path)
            files.append(path)

    for arg in paths:
        arg = str(arg)
        if os.path.isdir(arg):
            found = []
            for folder, dirs, names in os.walk(arg):
                dirs.sort()
                found += [os.path.join(folder, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
            for path in sorted(found):
                add(path)
        elif os.path.isfile(arg) and arg.lower().endswith(LIST_EXTENSIONS):
            base = os.path.dirname(arg)
            with open(arg, encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    entry = line.strip()
                    if not entry or entry.startswith("#"):
                        continue
                    path = entry if os.path.isabs(entry) else os.path.join(base, entry)
                    if os.path.isfile(path):
                        add(path)
                    else:
                        missing.append((path, f"listed in {arg} line {line_no}: no such file"))
        elif os.path.isfile(arg):
            add(arg)
        else:
            missing.append((arg, "no such file or folder"))
    return files, missing


def _read_rows(path: str, header: list | None = None) -> list:
    """Rows of a CSV written by this module (header dropped). A last line cut off by a kill (no newline) is
    removed from the file, so appending continues cleanly."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            fh.truncate(end)
            data = data[:end]
    rows = list(csv.reader(data.decode("utf-8").splitlines()))
    if not rows:
        return []
    if header is not None and rows[0] != header:
        raise ValueError(f"score: {path} exists with the header {rows[0]}, not {header} (another model's scores?); "
                         f"pass another --out or remove it")
    return rows[1:]


def _parts(path: str) -> list:
    return sorted(glob.glob(glob.escape(path) + ".part*"))


class _RowWriter:
    """Appends rows to a CSV (header first when the file is new), flushed after every batch."""

    def __init__(self, path: str, header: list):
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.fh)
        if new:
            self.writer.writerow(header)

    def write(self, rows) -> None:
        self.writer.writerows(rows)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _merge(out: str, header: list, order: dict) -> int:
    """Rank 0, at the end: `out` plus every `out.part*` into `out` (written atomically), one row per name, in
    the order of the file list (names from earlier runs that it no longer holds come last). Returns rows."""
    rows = {}
    for path in [out] + _parts(out):
        for row in _read_rows(path, header):
            rows.setdefault(row[0], row)
    ranked = sorted(rows.values(), key=lambda r: order.get(r[0], len(order)))
    tmp = f"{out}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(ranked)
    os.replace(tmp, out)
    for path in _parts(out):
        os.remove(path)
    return len(ranked)


def _barrier(dist: DistContext) -> None:
    if dist.distributed:
        torch.distributed.barrier(group=dist.host_group)


def score_to_csv(paths: list, metric: QualityMetric, out: str, errors: str | None = None, batch_size: int = 16,
                 num_workers: int = 4, decoder: str = "auto", progress: bool = True,
                 dist: DistContext | None = None) -> dict:
    """Score every image under `paths` (see collect_files) with `metric` into `out` (CSV `name,mos`, or
    `name,dmos` for a lower-is-better model); unreadable files go to `errors` (default OUT.errors.csv,
    `name,error`). Rows are appended to OUT.part<rank> after every batch; a rerun skips the names already in
    OUT, ERRORS or their parts, and rank 0 merges everything into OUT at the end. Returns counts."""
    dist = dist or DistContext()
    errors = errors or f"{os.path.splitext(out)[0]}.errors.csv"
    header = ["name", "dmos" if metric.lower_better else "mos"]
    files, missing = collect_files(paths)
    order = {name: i for i, name in enumerate(files + [m for m, _ in missing])}
    done = {r[0] for p in [out] + _parts(out) for r in _read_rows(p, header)}
    done |= {r[0] for p in [errors] + _parts(errors) for r in _read_rows(p, ERROR_HEADER)}
    _barrier(dist)  # every rank has read the state before any rank appends to it
    todo = [f for f in files if f not in done][dist.rank::dist.world_size]
    missing = [m for m in missing if m[0] not in done] if dist.is_main else []

    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(errors)) or ".", exist_ok=True)
    scores = _RowWriter(f"{out}.part{dist.rank}", header)
    failures = _RowWriter(f"{errors}.part{dist.rank}", ERROR_HEADER)
    failures.write(missing)
    n_scored, n_failed = 0, len(missing)
    if todo:
        loader = make_loader(IQADataset.from_files(todo), batch_size, shuffle=False, seed=0,
                             num_workers=num_workers, decoder=decoder, device=str(metric.device))
        bar = progress_bar(total=len(todo), desc=f"score{f' rank {dist.rank}' if dist.distributed else ''}",
                           unit="img", enabled=progress)
        pending = None  # the previous batch's (names, scores copied to the host, event): no per-batch GPU wait
        try:
            for batch in loader:
                failures.write(zip(batch["skipped"], batch["skip_reasons"]))
                n_failed += len(batch["skipped"])
                if batch["images"].shape[0]:
                    with torch.no_grad():
                        pred = metric.to_label_units(
                            metric.predict_batch(batch["images"], batch["heights"], batch["widths"]))
                    host = pred.to("cpu", non_blocking=True)
                    event = torch.cuda.Event() if host.device != pred.device else None
                    if event is not None:
                        event.record()
                    if pending is not None:
                        n_scored += _flush(pending, scores)
                    pending = (batch["names"], host, event)
                bar.update(len(batch["names"]) + len(batch["skipped"]))
            if pending is not None:
                n_scored += _flush(pending, scores)
        finally:
            bar.close()
            scores.close()
            failures.close()
    else:
        scores.close()
        failures.close()
    _barrier(dist)
    result = {"scored": n_scored, "failed": n_failed, "already_done": len(done), "out": out, "errors": errors}
    if dist.is_main:
        result["rows"] = _merge(out, header, order)
        result["error_rows"] = _merge(errors, ERROR_HEADER, order)
    return result


def _flush(pending: tuple, writer: _RowWriter) -> int:
    names, host, event = pending
    if event is not None:
        event.synchronize()
    writer.write(zip(names, (f"{v:.6g}" for v in host.tolist())))
    return len(names)


def main_score(args) -> int:
    from .core.dist import init_distributed, shutdown

    dist = init_distributed(args.device)
    try:
        metric = load_metric(args.checkpoint, resolve_device(args.device, dist))
        res = score_to_csv(args.paths, metric, args.out, args.errors, args.batch_size, args.num_workers,
                           args.decoder, not args.no_progress, dist)
    finally:
        shutdown()
    if dist.is_main:
        print(f"lmcl score: {res['rows']} scores in {res['out']} ({res['scored']} new, {res['already_done']} "
              f"names already done); {res['error_rows']} unreadable in {res['errors']}", file=sys.stderr)
    return 0
