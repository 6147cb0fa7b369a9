"""User-supplied input arrays (``.npy`` / ``.npz``), loaded without pickle.

Used for ``--input`` style options: the array is returned as stored (no pixel scaling; the
caller decides, since a user array is normally already in the model's input space).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nnbound.errors import InputError

NPZ_KEYS: tuple[str, ...] = ("x", "images")
"""Keys preferred in an ``.npz``, in order; otherwise its first array is used."""

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"
# bool, signed / unsigned integers and floats: anything a network input can be made of.
_NUMERIC_KINDS = "biuf"


def _check(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise InputError(
            f"{where}: array has dtype {arr.dtype}, expected a numeric (bool/int/float) array"
        )
    return arr


def load_array(path: str | Path, *, key: str | None = None) -> np.ndarray:
    """The numeric array stored in ``path``.

    ``.npy``: the array. ``.npz``: the array named ``key`` if given, else ``x`` or ``images``
    if present, else the first array in the archive. The format is taken from the file's magic
    bytes (so a misnamed file still loads); pickled object arrays are never loaded.

    Raises:
        InputError: missing file, corrupt or truncated file, unknown key, object / string /
            structured arrays. The message names ``path``.
    """
    path = Path(path)
    try:
        # We open the file ourselves: np.load(path) leaks its handle when a zip is corrupt.
        with path.open("rb") as f:
            magic = f.read(len(NPY_MAGIC))
            if not (magic.startswith(NPY_MAGIC) or magic.startswith(ZIP_MAGIC)):
                raise InputError(f"{path}: not a .npy or .npz file (unrecognized header)")
            f.seek(0)
            return _load_open(f, path, key)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a .npy or .npz file") from None
    except InputError:
        raise
    except ValueError as exc:
        # numpy reports both object arrays (allow_pickle=False) and bad headers as ValueError.
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(
                f"{path}: holds an object (pickled) array, which is refused for safety; "
                "save a numeric array instead"
            ) from None
        raise InputError(f"{path}: corrupt array file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"{path}: corrupt array file ({type(exc).__name__}: {exc})") from None


def _load_open(f: BinaryIO, path: Path, key: str | None) -> np.ndarray:
    """The chosen array of the open ``.npy`` / ``.npz`` file ``f`` (see :func:`load_array`)."""
    loaded = np.load(f, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise InputError(f"{path}: key {key!r} given but this is a .npy (single array)")
        return _check(loaded, str(path))
    with loaded as npz:
        names = list(npz.files)
        if not names:
            raise InputError(f"{path}: the .npz archive holds no arrays")
        if key is not None:
            if key not in names:
                raise InputError(f"{path}: no array {key!r} (arrays: {', '.join(names)})")
            chosen = key
        else:
            chosen = next((k for k in NPZ_KEYS if k in names), names[0])
        return _check(npz[chosen], f"{path}[{chosen}]")
