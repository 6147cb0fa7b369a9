"""ImageNet-style inputs from a local folder of images (JPEG / PNG / ... read with Pillow).

Preprocessing, as torchvision's ImageNet classification presets: RGB, resize the shorter side
to ``resize`` (bilinear, antialiased), center crop ``crop`` x ``crop``, pixels ``v / 255`` in
``[0, 1]``. The mean/std normalisation is *not* applied here: it belongs to the model
(:class:`~nnbound.catalogue.ImageClassifier`), so eps is measured in ``[0, 1]`` pixel space.

Labels (0-based class indices in the model's order, e.g. torchvision's ImageNet order), first
match wins:

1. a mapping file (``labels=``, or ``labels.csv`` / ``labels.txt`` in the folder): one
   ``filename,label`` or ``filename label`` per line, ``#`` comments and a non-numeric header
   line allowed; file names are matched with or without their folder part;
2. the file names, when every one is ``CLASS.ID.EXT`` as the CLEVER reference's ImageNet
   images (``139.00029510.jpg`` is class 139);
3. none: ``labels`` is None and the caller decides (e.g. the model's predictions).

Class names (optional, for display): ``class_names.txt`` / ``classes.txt`` in the folder, one
name per line in class order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nnbound.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
LABEL_FILES = ("labels.csv", "labels.txt")
CLASS_NAME_FILES = ("class_names.txt", "classes.txt")
_PREFIX_LABEL = re.compile(r"^(\d+)\.[^.]+\.[^.]+$")  # CLASS.ID.EXT


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """Images of a folder, preprocessed.

    Attributes:
        images: float32 ``(N, 3, crop, crop)`` in ``[0, 1]``.
        labels: int64 ``(N,)``, or None when the folder has no labels.
        files: the N file names, sorted.
        class_names: one name per class, or None.
        source: the folder and where the labels came from.
    """

    images: Tensor
    labels: Tensor | None
    files: tuple[str, ...]
    class_names: tuple[str, ...] | None
    source: str


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (by suffix), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def preprocess(path: str | Path, crop: int, resize: int) -> np.ndarray:
    """One image as uint8 ``(3, crop, crop)``: RGB, shorter side resized to ``resize``
    (bilinear, antialiased), center crop (torchvision's rounding)."""
    from PIL import Image, UnidentifiedImageError

    if crop < 1 or resize < crop:
        raise InputError(f"need 1 <= crop <= resize, got crop {crop}, resize {resize}")
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)
    size = (resize, new_long) if w <= h else (new_long, resize)
    img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    w, h = img.size
    top = round((h - crop) / 2.0)
    left = round((w - crop) / 2.0)
    img = img.crop((left, top, left + crop, top + crop))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def read_label_map(path: str | Path) -> dict[str, int]:
    """``file name -> class index`` from a ``filename,label`` / ``filename label`` text file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the label file {path} ({exc})") from None
    out: dict[str, int] = {}
    first = True
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in (line.split(",") if "," in line else line.split())]
        if len(parts) < 2:
            raise InputError(f"{path}:{n}: expected 'filename,label', got {raw!r}")
        name, value = parts[0], parts[1]
        try:
            label = int(value)
        except ValueError:
            if first:  # a header line
                first = False
                continue
            raise InputError(f"{path}:{n}: label {value!r} is not an integer") from None
        first = False
        if label < 0:
            raise InputError(f"{path}:{n}: negative label {label}")
        out[name] = label
    if not out:
        raise InputError(f"{path}: no 'filename,label' lines")
    return out


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def load_image_folder(
    folder: str | Path,
    *,
    crop: int = 224,
    resize: int = 256,
    labels: str | Path | None = None,
    start: int = 0,
    count: int | None = None,
    num_classes: int = 1000,
) -> ImageFolder:
    """Images ``start .. start + count`` (in file-name order) of ``folder``, preprocessed.

    Args:
        folder: the image folder (files directly inside it).
        crop, resize: center-crop side and shorter-side resize (224/256; 299/342 for
            Inception-v3).
        labels: a mapping file (see the module docstring); default: ``labels.csv`` /
            ``labels.txt`` in the folder, else class-prefixed file names, else none.
        start, count: which images (all from ``start`` when ``count`` is None).
        num_classes: labels must lie in ``[0, num_classes)``.

    Raises:
        InputError: missing folder, no images, unreadable image or label file, an image with
            no label in the mapping, a label out of range, ``start`` out of range.
    """
    folder = Path(folder)
    files = list_images(folder)
    if not 0 <= start < len(files):
        raise InputError(f"--startimage {start} outside the {len(files)} images of {folder}")
    stop = len(files) if count is None else min(len(files), start + max(int(count), 0))
    chosen = files[start:stop]
    label_file = Path(labels) if labels is not None else _find(folder, LABEL_FILES)
    how = "no labels"
    y: list[int] | None = None
    if label_file is not None:
        mapping = read_label_map(label_file)
        y = []
        for f in chosen:
            key = next(
                (k for k in (f.name, f"{folder.name}/{f.name}", f.stem) if k in mapping), None
            )
            if key is None:
                raise InputError(f"{label_file}: no label for {f.name}")
            y.append(mapping[key])
        how = f"labels from {label_file.name}"
    elif all(_PREFIX_LABEL.match(f.name) for f in chosen):
        y = [int(_PREFIX_LABEL.match(f.name).group(1)) for f in chosen]  # type: ignore[union-attr]
        how = "labels from the file names"
    if y is not None:
        bad = [(f.name, v) for f, v in zip(chosen, y, strict=True) if v >= num_classes]
        if bad:
            raise InputError(f"label {bad[0][1]} of {bad[0][0]} is outside [0, {num_classes})")
    names_file = _find(folder, CLASS_NAME_FILES)
    class_names = None
    if names_file is not None:
        class_names = tuple(
            line.strip()
            for line in names_file.read_text(encoding="utf-8").splitlines()
            if line.strip()
        )
    raw = np.stack([preprocess(f, crop, resize) for f in chosen])
    images = torch.from_numpy(raw.astype(np.float32) / 255.0)
    return ImageFolder(
        images=images,
        labels=None if y is None else torch.tensor(y, dtype=torch.long),
        files=tuple(f.name for f in chosen),
        class_names=class_names,
        source=f"{folder} ({how})",
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "list_images",
    "load_image_folder",
    "preprocess",
    "read_label_map",
]
