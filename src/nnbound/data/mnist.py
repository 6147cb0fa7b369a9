"""MNIST from the four IDX files in a local folder (nothing is downloaded).

Expected names (each may also end in ``.gz``; gzip is detected from the file's magic bytes):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``. The folder may be the one holding them, or a parent with an
``MNIST/raw`` (torchvision's layout) or ``mnist`` subfolder.

IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header ``0x00 0x00 <type> <ndim>``
then ``ndim`` big-endian uint32 sizes, then the row-major data. Every check fails with an
:class:`~nnbound.errors.InputError` that names the file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from nnbound.data.dataset import Dataset, check_split, scale_pixels
from nnbound.errors import InputError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type byte -> big-endian numpy dtype."""

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at end of file), read in chunks so a header that claims
    a huge size cannot make us allocate it before the data is seen."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in IDX file ``path`` (plain or gzipped), in native byte order.

    Raises:
        InputError: missing file, bad magic, unknown type, truncated or oversized data,
            corrupt gzip stream. The message names ``path``.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == GZIP_MAGIC
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            head = _read_exact(f, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise InputError(
                    f"{path}: not an IDX file (magic bytes {head.hex() or 'missing'}, "
                    "expected 0000<type><ndim>)"
                )
            type_code, ndim = head[2], head[3]
            if type_code not in IDX_TYPES:
                raise InputError(f"{path}: unknown IDX data type 0x{type_code:02x}")
            if ndim == 0:
                raise InputError(f"{path}: IDX header declares 0 dimensions")
            dims_raw = _read_exact(f, 4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise InputError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dtype = IDX_TYPES[type_code]
            expected = math.prod(dims) * dtype.itemsize
            # Read one byte more than declared to detect trailing garbage.
            data = _read_exact(f, expected + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; EOFError is a gzip stream cut short.
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if len(data) < expected:
        raise InputError(
            f"{path}: truncated IDX data: header {dims} needs {expected} bytes, file has "
            f"{len(data)}"
        )
    if len(data) > expected:
        raise InputError(f"{path}: trailing bytes after the {expected} declared by header {dims}")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (plain first)."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_dirs(data_dir: Path) -> list[Path]:
    """Folders searched for the IDX files, in order."""
    return [data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist"]


def load_mnist(
    split: str, input_range: tuple[float, float], data_dir: str | Path | None
) -> Dataset:
    """The MNIST ``split`` from IDX files under ``data_dir``; images ``(N, 1, 28, 28)``."""
    check_split(split)
    img_stem, lab_stem = MNIST_FILES[split]
    if data_dir is None:
        raise InputError(
            "MNIST is not bundled: pass --data-dir DIR (data_dir=...) pointing at a folder with "
            f"{img_stem}[.gz] and {lab_stem}[.gz]; the first 100 MNIST test images are built in "
            "as dataset 'mnist100'"
        )
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"MNIST data dir {data_dir} is not a folder")
    for folder in candidate_dirs(data_dir):
        img_path, lab_path = _find(folder, img_stem), _find(folder, lab_stem)
        if img_path is not None and lab_path is not None:
            break
    else:
        raise InputError(
            f"MNIST {split} files {img_stem}[.gz] and {lab_stem}[.gz] not found in {data_dir} "
            "(nor in its MNIST/raw or mnist subfolders); the first 100 MNIST test images are "
            "built in as dataset 'mnist100'"
        )
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(
            f"{img_path}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(
            f"{lab_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise InputError(f"{lab_path}: {len(labels)} labels for {len(images)} images in {img_path}")
    if len(labels) and int(labels.max()) > 9:
        raise InputError(f"{lab_path}: label {int(labels.max())} is not a digit 0..9")
    return Dataset(
        images=scale_pixels(images[:, None, :, :], 255.0, input_range),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name="mnist",
        input_range=input_range,
        class_names=MNIST_CLASSES,
        source=f"IDX files {img_path} and {lab_path}",
    )
