"""Convert the first 100 MNIST / CIFAR-10 test images from CSV to the package's built-in .npz.

Source: the public ERAN repository (github.com/eth-sri/eran, folder ``data/``), files
``mnist_test.csv`` / ``cifar10_test.csv`` cut to their first 100 rows
(``mnist_test_100.csv``: label + 784 uint8 pixels, row-major 28x28; ``cifar10_test_100.csv``:
label + 3072 uint8 values in HWC order, R,G,B interleaved per pixel).

Output (``np.savez_compressed``, no pickled objects, read back with ``allow_pickle=False``):
``src/nnbound/assets/data/mnist_test_100.npz`` and ``cifar10_test_100.npz``, each with
``images`` uint8 ``(100, C, H, W)`` (channels first, as the network IR expects) and
``labels`` uint8 ``(100,)``.

Usage: ``python scripts/make_builtin_data.py [CSV_DIR] [OUT_DIR]``
(defaults: ``/work/shared/data`` and ``src/nnbound/assets/data``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV_DIR = Path("/work/shared/data")
DEFAULT_OUT_DIR = ROOT / "src" / "nnbound" / "assets" / "data"

# name -> (csv file, npz file, (H, W, C) of one CSV row)
SETS = {
    "mnist": ("mnist_test_100.csv", "mnist_test_100.npz", (28, 28, 1)),
    "cifar10": ("cifar10_test_100.csv", "cifar10_test_100.npz", (32, 32, 3)),
}


def read_csv(path: Path, hwc: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, C, H, W), labels uint8 (N,)) from ``label,v0,v1,...`` rows in HWC
    order; fails loudly on any value that is not an integer in range."""
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    n_pix = hwc[0] * hwc[1] * hwc[2]
    if rows.shape[1] != 1 + n_pix:
        raise SystemExit(f"{path}: expected {1 + n_pix} columns, got {rows.shape[1]}")
    labels, pixels = rows[:, 0], rows[:, 1:]
    if labels.min() < 0 or labels.max() > 9 or pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"{path}: labels must be 0..9 and pixels 0..255")
    # HWC rows -> (N, H, W, C) -> channels first (N, C, H, W).
    images = pixels.reshape(len(rows), *hwc).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.uint8)


def main(argv: list[str]) -> int:
    csv_dir = Path(argv[1]) if len(argv) > 1 else DEFAULT_CSV_DIR
    out_dir = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (csv_name, npz_name, hwc) in SETS.items():
        images, labels = read_csv(csv_dir / csv_name, hwc)
        np.savez_compressed(out_dir / npz_name, images=images, labels=labels)
        print(
            f"{name}: {images.shape} images, labels {labels[:10].tolist()}... -> "
            f"{out_dir / npz_name}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
