"""IQA datasets: an image root plus a labels CSV (`name,mos[,std][,ref]`, the pyiqa layout)."""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger("lmcl_fast.data")

# Accepted header spellings (case-insensitive), first match wins. pyiqa and most IQA repos use one of these.
_NAME_COLUMNS = ("name", "image_name", "dist_name", "filename", "image")
_MOS_COLUMNS = ("mos", "dmos", "score", "mos_zscore")
_STD_COLUMNS = ("std", "mos_std")
_REF_COLUMNS = ("ref", "ref_name")


@dataclass(frozen=True)
class SkippedItem:
    """What `IQADataset.__getitem__` returns for an unreadable or corrupt image (instead of bare None), so the
    batch can still report the file by name. It is falsy, so `if not item:` treats it like None."""

    name: str
    index: int
    reason: str

    def __bool__(self) -> bool:
        return False


def _pick(header: list, candidates: tuple, where: str, required: bool):
    lowered = [h.strip().lower() for h in header]
    for c in candidates:
        if c in lowered:
            return lowered.index(c)
    if required:
        raise ValueError(f"IQADataset: {where}: the header needs a column named one of {list(candidates)}, "
                         f"got {header}")
    return None


class ImageTooLarge(ValueError):
    """An image with more pixels than Pillow's decompression-bomb limit `PIL.Image.MAX_IMAGE_PIXELS`."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow's 16-bit grey modes: convert("RGB") would clip them at 255, so they are scaled to 8 bits instead.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _png_crc_error(data: bytes) -> str | None:
    """The first PNG chunk whose CRC is wrong, as a message (libpng, DALI's PNG decoder, rejects such a file;
    Pillow does not check IDAT CRCs, so both decoders skip it only if this check runs). A truncated chunk is
    left to the decoder, which reports truncation."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            return None
        if zlib.crc32(data[pos + 4:end]) != struct.unpack(">I", data[end:end + 4])[0]:
            return f"PNG chunk {kind.decode('latin-1')!r} at byte {pos} has a bad CRC"
        if kind == b"IEND":
            return None
        pos = end + 4
    return None


def check_image_bytes(data) -> None:
    """Checks both decoders run on a file's bytes before decoding it: PNG chunk CRCs (ValueError), and the
    pixel count from the header against `PIL.Image.MAX_IMAGE_PIXELS` (`ImageTooLarge`: a decompression bomb
    is skipped before any pixel memory is allocated; set the limit to None to decode any size). Headers
    Pillow cannot parse pass: the decoder then reports them."""
    data = bytes(data)
    if data.startswith(_PNG_SIGNATURE):
        error = _png_crc_error(data)
        if error:
            raise ValueError(error)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image too large to decode (decompression-bomb guard): {e}") from None
    except Exception:  # noqa: BLE001  (not Pillow's to judge: the decoder reports it)
        return
    if limit and width * height > limit:
        raise ImageTooLarge(f"image too large to decode (decompression-bomb guard): {width} x {height} = "
                            f"{width * height} pixels > PIL.Image.MAX_IMAGE_PIXELS = {limit}")


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grey (e.g. a 16-bit PNG) to 8 bits as DALI's decoder does: round(v * 255 / 65535).
        v = np.asarray(im).astype(np.int64).clip(0, 65535)
        grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))

def check_relative(name: str, where: str) -> None:
    """Refuse a dataset name that is absolute or leaves the image root (`..`): names come from label files
    that may not be trusted, and must not reach files outside the dataset."""
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise ValueError(f"IQADataset: {where}: image name {name!r} is an absolute path; names are paths "
                         f"relative to the image root")
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        if depth < 0:
            raise ValueError(f"IQADataset: {where}: image name {name!r} leaves the image root (..); names are "
                             f"paths inside the root")


def decode_image(path: str) -> torch.Tensor:
    """Decode one file with Pillow into uint8 [H, W, 3] (EXIF orientation applied; grey, palette, alpha and
    CMYK images converted to RGB, 16-bit images scaled to 8 bits, as DALI's decoder with output_type=RGB
    does). Raises OSError or ValueError on unreadable data, `ImageTooLarge` (a ValueError) above
    `PIL.Image.MAX_IMAGE_PIXELS` pixels."""
    with open(path, "rb") as fh:
        data = fh.read()
    if not data:
        raise ValueError("empty file (0 bytes)")
    check_image_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_image_bytes enforced the limit
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ValueError(f"not an image Pillow can read ({len(data)} bytes, starting {data[:8]!r})") from None
        with im:
            im.load()  # full decode here, so truncated data raises (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
            rgb = _to_rgb(ImageOps.exif_transpose(im))
    return torch.from_numpy(rgb.copy())


class IQADataset(torch.utils.data.Dataset):
    """Images under `root` listed in a CSV with a header row: `name,mos[,std][,ref]`.

    - `name`: path relative to `root`; `mos`: the score; `std`: optional spread of the score; `ref`: optional
      reference (pristine content) id used by `group_keys()` for content-aware splits.
    - `.mos` is float64 and oriented larger-is-better: with `lower_is_better=True` (DMOS-style labels) the
      values are negated.
    - `ds[i]` is `dict(image=uint8 [H, W, 3], mos=float, index=i, name=str)`, or a `SkippedItem(name, index,
      reason)` (falsy) when the file is missing, unreadable or corrupt; a warning names the file.
    - `index` is the position in this dataset (a `subset` view numbers its own items 0..len-1).
    """

    def __init__(self, root, csv_path, lower_is_better: bool = False):
        names, mos, std, refs = self._read_csv(str(csv_path))
        self._init(str(root), str(csv_path), bool(lower_is_better), names,
                   -mos if lower_is_better else mos, std, refs)

    def _init(self, root, csv_path, lower_is_better, names, mos, std, refs):
        self.root = root
        self.csv_path = csv_path
        self.lower_is_better = lower_is_better
        self.names = names
        self.mos = mos
        self.std = std
        self._refs = refs

    @staticmethod
    def _read_csv(csv_path: str):
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"IQADataset: csv_path {csv_path!r} does not exist")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = [(line, r) for line, r in enumerate(csv.reader(f), start=1) if r and any(c.strip() for c in r)]
        if not rows:
            raise ValueError(f"IQADataset: csv_path {csv_path!r} is empty (a header row name,mos[,std] is required)")
        (header_line, header), body = rows[0], rows[1:]
        where = f"{csv_path}, line {header_line}"
        i_name = _pick(header, _NAME_COLUMNS, where, required=True)
        i_mos = _pick(header, _MOS_COLUMNS, where, required=True)
        i_std = _pick(header, _STD_COLUMNS, where, required=False)
        i_ref = _pick(header, _REF_COLUMNS, where, required=False)
        names, mos, std, refs, seen = [], [], [], [], {}
        for line, row in body:
            where = f"{csv_path}, line {line}"

            def cell(i, required=True):
                if i < len(row):
                    return row[i].strip()
                if not required:
                    return ""
                raise ValueError(f"IQADataset: {where}: column {header[i].strip()!r} is missing (the row has "
                                 f"{len(row)} of the header's {len(header)} columns): {row}")

            def number(i, required=True):
                text = cell(i, required)
                if not text and not required:
                    return math.nan
                try:
                    value = float(text)
                except ValueError:
                    raise ValueError(f"IQADataset: {where}, column {header[i].strip()!r}: not a number: "
                                     f"{text!r}") from None
                if not math.isfinite(value):
                    raise ValueError(f"IQADataset: {where}, column {header[i].strip()!r}: must be finite, got "
                                     f"{text!r}")
                return value

            name = cell(i_name)
            if not name:
                raise ValueError(f"IQADataset: {where}, column {header[i_name].strip()!r}: empty image name")
            check_relative(name, f"{where}, column {header[i_name].strip()!r}")
            if name in seen:
                raise ValueError(f"IQADataset: {where}, column {header[i_name].strip()!r}: duplicate name {name!r} "
                                 f"(first on line {seen[name]})")
            seen[name] = line
            names.append(name)
            mos.append(number(i_mos))
            std.append(number(i_std, required=False) if i_std is not None else math.nan)
            refs.append((cell(i_ref, required=False) or name) if i_ref is not None else name)
        if not names:
            raise ValueError(f"IQADataset: csv_path {csv_path!r} has a header but no rows")
        return (names, np.asarray(mos, dtype=np.float64),
                np.asarray(std, dtype=np.float64) if i_std is not None else None, refs)

    @classmethod
    def from_files(cls, paths) -> "IQADataset":
        """A dataset of image files without labels (mos 0), for scoring: names are the paths as given (read
        as they are, not under a root)."""
        names = [str(p) for p in paths]
        ds = cls.__new__(cls)
        ds._init("", "", False, names, np.zeros(len(names)), None, list(names))
        return ds

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.names[i])

    def __getitem__(self, i: int):
        i = int(i)
        name = self.names[i]
        try:
            image = decode_image(self.path(i))
        except Exception as e:  # noqa: BLE001  (any failure of one file skips it: never a crash mid-epoch)
            log.warning("skipping unreadable image %s: %s", name, e)
            return SkippedItem(name=name, index=i, reason=str(e))
        return dict(image=image, mos=float(self.mos[i]), index=i, name=name)

    def subset(self, indices) -> "IQADataset":
        """A view on the rows `indices` (any int sequence, numpy or torch), in that order."""
        idx = np.asarray(torch.as_tensor(indices, dtype=torch.int64).reshape(-1).numpy())
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"IQADataset.subset: indices must lie in [0, {len(self)}), "
                             f"got min {idx.min()} max {idx.max()}")
        view = IQADataset.__new__(IQADataset)
        view._init(self.root, self.csv_path, self.lower_is_better, [self.names[j] for j in idx], self.mos[idx],
                   None if self.std is None else self.std[idx], [self._refs[j] for j in idx])
        return view

    def group_keys(self) -> list:
        """Reference (content) id of every row: the CSV's `ref` column, else the name itself."""
        return list(self._refs)

    def __repr__(self) -> str:
        return f"IQADataset(root={self.root!r}, csv_path={self.csv_path!r}, n={len(self)})"
