"""CIFAR-10 from a local folder, binary or python version (nothing is downloaded).

* Binary version (``cifar-10-batches-bin``, what the RecurJac reference reads):
  ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``, each a sequence of
  3073-byte records: 1 label byte then 3072 pixel bytes in CHW order (1024 R, 1024 G, 1024 B).
* Python version (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``, pickled dicts ``{"data": uint8 (N, 3072) CHW rows, "labels": [int], ...}``
  (Python 2 pickles in the official archive, so keys may be bytes).

Pickles are read with :class:`SafeUnpickler`, which resolves only the handful of globals a
pickled dict of numpy arrays needs (numpy's array / dtype / scalar reconstructors); any other
global (``os.system``, ``builtins.eval``, ...) is refused with an :class:`InputError` *before*
it is looked up, so a malicious file cannot run code. Object arrays are refused too.

``data_dir`` may be the folder holding the batches or a parent holding
``cifar-10-batches-bin`` / ``cifar-10-batches-py``; the binary version wins if both exist.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnbound.data.dataset import Dataset, check_split, scale_pixels
from nnbound.errors import InputError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
RECORD_BYTES = 1 + 3 * 32 * 32
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, restricted to latin-1 (the
    only encoding such pickles name) so a pickle cannot reach any other codec."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 strings")
    return obj.encode("latin1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    # The reconstructors are taken from numpy's own __reduce__ output rather than imported by
    # module path: numpy 2 renamed numpy.core to numpy._core (importing the old name warns),
    # while old pickles (the official CIFAR files) still name numpy.core.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


_SAFE_GLOBALS = _safe_globals()


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only build builtin containers/scalars and numpy arrays.

    ``find_class`` is the only way a pickle can obtain a callable (GLOBAL, STACK_GLOBAL, INST,
    OBJ and EXT opcodes all go through it), so allowing only the numpy reconstructors above
    means no other code can run. Persistent ids are refused by the base class.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only numpy arrays and builtin "
                "containers are allowed)"
            ) from None


def safe_unpickle(data: bytes, origin: str | Path) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; any failure is an :class:`InputError`
    naming ``origin``. ``encoding="latin1"`` reads Python 2 pickles (the official CIFAR
    files) the way numpy documents."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"{origin}: unsafe or corrupt pickle: {exc}") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise InputError(f"{origin}: corrupt pickle ({type(exc).__name__}: {exc})") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def read_binary_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``(N, 3, 32, 32)``, labels uint8 ``(N,)``) from a binary-version batch."""
    path = Path(path)
    data = _read_bytes(path)
    if not data or len(data) % RECORD_BYTES:
        raise InputError(
            f"{path}: size {len(data)} is not a positive multiple of the {RECORD_BYTES}-byte "
            "CIFAR-10 record (truncated or not a CIFAR-10 binary batch)"
        )
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = rec[:, 0].copy()
    if int(labels.max()) > 9:
        raise InputError(f"{path}: label {int(labels.max())} is not a CIFAR-10 class 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def read_python_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``(N, 3, 32, 32)``, labels uint8 ``(N,)``) from a python-version batch,
    unpickled safely (see the module docstring)."""
    path = Path(path)
    obj = safe_unpickle(_read_bytes(path), path)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 pickles read with latin1 give str keys; bytes keys come from encoding="bytes"
    # re-pickles. Accept both.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise InputError(
            f"{path}: missing key 'data' or 'labels' (keys: {sorted(map(str, batch))}); "
            "is this a CIFAR-10 python batch?"
        )
    data = batch["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or (data.shape[1] != RECORD_BYTES - 1)
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: 'data' must be a uint8 array (N, 3072), got {desc}")
    try:
        labels = np.asarray(batch["labels"])
    except (ValueError, TypeError):
        raise InputError(f"{path}: 'labels' is not a list of integers") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise InputError(
            f"{path}: 'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise InputError(f"{path}: labels must be CIFAR-10 classes 0..9")
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.uint8)


def _locate(data_dir: Path, split: str) -> tuple[list[Path], Callable[[Path], Any]] | None:
    """The batch files of ``split`` and their reader, for the first layout found complete."""
    stems = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    layouts = [
        (folder, ".bin", read_binary_batch)
        for folder in (data_dir, data_dir / "cifar-10-batches-bin")
    ] + [(folder, "", read_python_batch) for folder in (data_dir, data_dir / "cifar-10-batches-py")]
    for folder, suffix, reader in layouts:
        paths = [folder / (stem + suffix) for stem in stems]
        if all(p.is_file() for p in paths):
            return paths, reader
    return None


def load_cifar10(
    split: str, input_range: tuple[float, float], data_dir: str | Path | None
) -> Dataset:
    """The CIFAR-10 ``split`` from batches under ``data_dir``; images ``(N, 3, 32, 32)``."""
    check_split(split)
    if data_dir is None:
        raise InputError(
            "CIFAR-10 is not bundled: pass --data-dir DIR (data_dir=...) pointing at "
            "cifar-10-batches-bin or cifar-10-batches-py; the first 100 CIFAR-10 test images "
            "are built in as dataset 'cifar100'"
        )
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"CIFAR-10 data dir {data_dir} is not a folder")
    found = _locate(data_dir, split)
    if found is None:
        stems = TRAIN_BATCHES if split == "train" else TEST_BATCHES
        raise InputError(
            f"CIFAR-10 {split} batches ({', '.join(stems)}, with .bin for the binary version) "
            f"not found in {data_dir} nor its cifar-10-batches-bin / cifar-10-batches-py "
            "subfolders; the first 100 CIFAR-10 test images are built in as dataset 'cifar100'"
        )
    paths, reader = found
    parts = [reader(p) for p in paths]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset(
        images=scale_pixels(images, 255.0, input_range),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name="cifar",
        input_range=input_range,
        class_names=CIFAR10_CLASSES,
        source="CIFAR-10 batches " + ", ".join(str(p) for p in paths),
    )
