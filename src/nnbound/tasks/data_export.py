"""Dataset images written to a ``.npy`` file, for the commands that take ``--input X.npy``
(``predict``, ``bounds``, ...): a new user has no ``x.npy`` and no way to guess its shape, dtype
and pixel range; this writes one that fits a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnbound.data.registry import load_dataset
from nnbound.errors import InputError


@dataclass(frozen=True)
class Exported:
    """What was written: ``count`` images of ``shape`` from ``dataset`` rows ``start`` on, in
    ``input_range``; ``labels`` the path of the labels file, if one was written."""

    path: Path
    labels: Path | None
    dataset: str
    start: int
    count: int
    shape: tuple[int, ...]
    input_range: tuple[float, float]


def export_images(
    dataset: str,
    out: str | Path,
    *,
    count: int,
    start: int = 0,
    input_range: tuple[float, float] = (0.0, 1.0),
    data_dir: str | None = None,
    labels_out: str | Path | None = None,
    split: str = "test",
) -> Exported:
    """Write images ``start .. start + count`` of ``dataset`` (float32 ``(count, C, H, W)``,
    pixels scaled to ``input_range``) to ``out``; their labels (int64) to ``labels_out``.

    Fewer than ``count`` are written where the dataset ends first (the result says how many).
    """
    if count < 1:
        raise InputError(f"--count must be >= 1, got {count}")
    ds = load_dataset(dataset, split=split, input_range=input_range, data_dir=data_dir)
    n = len(ds.labels)
    if not 0 <= start < n:
        raise InputError(f"--start {start} outside the {n} images of {dataset}")
    stop = min(n, start + count)
    out = Path(out)
    if out.suffix != ".npy":
        raise InputError(f"--out must name a .npy file, got {out}")
    images = ds.images[start:stop].numpy().astype(np.float32)
    try:
        np.save(out, images)
        if labels_out is not None:
            np.save(Path(labels_out), ds.labels[start:stop].numpy().astype(np.int64))
    except OSError as exc:
        raise InputError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return Exported(
        out,
        Path(labels_out) if labels_out is not None else None,
        dataset,
        start,
        stop - start,
        tuple(images.shape[1:]),
        (float(ds.input_range[0]), float(ds.input_range[1])),
    )
