"""CIFAR-10 binary and python batches written here; the pickle reader must never run code."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.data import load_dataset
from nnbound.data.cifar import CIFAR10_CLASSES, read_binary_batch, read_python_batch, safe_unpickle
from nnbound.errors import InputError


def batch_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 3, 32, 32), labels uint8 (n,))."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, size=n, dtype=np.uint8),
    )


def binary_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records of 1 label byte + 3072 CHW pixel bytes."""
    return np.concatenate([labels[:, None], images.reshape(len(images), -1)], axis=1).tobytes()


def write_binary(folder: Path, n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, stem in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        out[stem] = batch_arrays(n, i)
        (folder / f"{stem}.bin").write_bytes(binary_bytes(*out[stem]))
    return out


def write_python(
    folder: Path, n: int = 2, protocol: int = pickle.HIGHEST_PROTOCOL, byte_keys: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, stem in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = batch_arrays(n, 10 + i)
        out[stem] = (images, labels)
        d = {
            "batch_label": f"batch {stem}",
            "labels": [int(v) for v in labels],
            "data": images.reshape(n, -1),
            "filenames": [f"img{j}.png" for j in range(n)],
        }
        if byte_keys:
            d = {k.encode(): v for k, v in d.items()}
        (folder / stem).write_bytes(pickle.dumps(d, protocol=protocol))
    return out


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A pickle laid out exactly as Python 2's cPickle (protocol 2) writes the official CIFAR
    batches: py2 ``str`` opcodes (U/T) and ``numpy.core.multiarray._reconstruct``."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    dtype = (
        b"cnumpy\ndtype\n"
        + s(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + s(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + b"K\x00\x85"
        + s(b"b")
        + b"\x87R"
        + b"(K\x01"
        + i(data.shape[0])
        + i(data.shape[1])
        + b"\x86"
        + dtype
        + b"\x89"
        + s(data.tobytes())
        + b"tb"
    )
    lab = b"](" + b"".join(i(v) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + s(b"data")
        + array
        + s(b"labels")
        + lab
        + s(b"batch_label")
        + s(b"testing batch 1 of 1")
        + b"u."
    )


# -- binary version -----------------------------------------------------------------------


def test_binary_version_chw_order_and_scaling(tmp_path: Path) -> None:
    batches = write_binary(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset("cifar", data_dir=tmp_path)
    images, labels = batches["test_batch"]
    assert ds.shape == (3, 32, 32) and len(ds) == 3 and ds.class_names == CIFAR10_CLASSES
    assert ds.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(ds.images.numpy(), images / 255.0 - 0.5, atol=1e-7)
    # channel 0 is the first 1024 pixel bytes of the record (R plane), row-major
    raw = binary_bytes(images, labels)
    assert ds.images[0, 0, 0, 1] == pytest.approx(raw[2] / 255 - 0.5, abs=1e-7)
    assert ds.images[0, 1, 0, 0] == pytest.approx(raw[1 + 1024] / 255 - 0.5, abs=1e-7)


def test_binary_train_split_concatenates_five_batches(tmp_path: Path) -> None:
    batches = write_binary(tmp_path, n=2)
    ds = load_dataset("cifar10", split="train", data_dir=tmp_path, input_range=(0, 1))
    assert len(ds) == 10
    expected = np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)])
    assert ds.labels.tolist() == expected.tolist()
    np.testing.assert_allclose(ds.images[-2:].numpy(), batches["data_batch_5"][0] / 255, atol=1e-7)


def test_binary_truncated_and_bad_labels(tmp_path: Path) -> None:
    images, labels = batch_arrays(2, 0)
    p = tmp_path / "b.bin"
    p.write_bytes(binary_bytes(images, labels)[:-1])
    with pytest.raises(InputError, match=r"not a positive multiple of the 3073-byte"):
        read_binary_batch(p)
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"3073"):
        read_binary_batch(p)
    labels[1] = 11
    p.write_bytes(binary_bytes(images, labels))
    with pytest.raises(InputError, match=r"label 11"):
        read_binary_batch(p)
    with pytest.raises(InputError, match=r"file not found"):
        read_binary_batch(tmp_path / "missing.bin")


# -- python (pickle) version --------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python_version_every_protocol(tmp_path: Path, protocol: int) -> None:
    batches = write_python(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset("cifar", data_dir=tmp_path)
    images, labels = batches["test_batch"]
    assert ds.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(ds.images.numpy(), images / 255.0 - 0.5, atol=1e-7)


def test_python_version_bytes_keys_and_numpy_labels(tmp_path: Path) -> None:
    write_python(tmp_path, byte_keys=True)
    assert len(load_dataset("cifar", split="train", data_dir=tmp_path)) == 10
    images, labels = batch_arrays(3, 1)
    p = tmp_path / "np_labels"
    p.write_bytes(pickle.dumps({"data": images.reshape(3, -1), "labels": list(labels)}))
    got_images, got_labels = read_python_batch(p)  # labels are numpy scalars here
    assert got_labels.tolist() == labels.tolist() and np.array_equal(got_images, images)


def test_python2_pickle_like_the_official_files(tmp_path: Path) -> None:
    images, labels = batch_arrays(2, 3)
    p = tmp_path / "test_batch"
    p.write_bytes(py2_cifar_pickle(images.reshape(2, -1), [int(v) for v in labels]))
    got_images, got_labels = read_python_batch(p)
    assert np.array_equal(got_images, images) and got_labels.tolist() == labels.tolist()


def test_binary_layout_wins_over_python(tmp_path: Path) -> None:
    bin_batches = write_binary(tmp_path / "cifar-10-batches-bin")
    write_python(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar", data_dir=tmp_path)
    assert ds.labels.tolist() == bin_batches["test_batch"][1].tolist() and ".bin" in ds.source


class _Evil:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("kind", ["system", "eval", "exec"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = {
        "system": _Evil(os.system, f"touch {marker}"),
        "eval": _Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "exec": _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }[kind]
    images, _ = batch_arrays(1, 0)
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({"data": images.reshape(1, -1), "labels": [0], "x": payload}))
    with pytest.raises(InputError, match=r"unsafe or corrupt pickle: refusing to load global") as e:
        load_dataset("cifar", data_dir=tmp_path)
    assert str(p) in str(e.value)
    assert not marker.exists()


def test_other_unsafe_or_odd_pickles(tmp_path: Path) -> None:
    # a class outside the allow-list (even a harmless one) is refused
    with pytest.raises(InputError, match=r"refusing to load global collections.OrderedDict"):
        safe_unpickle(pickle.dumps(__import__("collections").OrderedDict(a=1)), "x")
    # _codecs.encode is allowed only for latin-1 (what protocol-2 bytes use)
    evil = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf16\x86R."
    with pytest.raises(InputError, match=r"latin-1"):
        safe_unpickle(evil, "x")
    with pytest.raises(InputError, match=r"corrupt pickle"):
        safe_unpickle(b"\x80\x04garbage", "x")
    with pytest.raises(InputError, match=r"corrupt pickle"):
        safe_unpickle(pickle.dumps({"a": 1})[:-3], "x")


def test_python_batch_content_checks(tmp_path: Path) -> None:
    images, _ = batch_arrays(2, 0)
    p = tmp_path / "b"
    cases = [
        ([1, 2], "expected a pickled dict"),
        ({"data": images.reshape(2, -1)}, "missing key 'data' or 'labels'"),
        ({"data": images.reshape(2, -1).astype(np.int16), "labels": [0, 1]}, "uint8 array"),
        ({"data": images.reshape(2, -1), "labels": [0]}, "must be 2 integers"),
        ({"data": images.reshape(2, -1), "labels": [0, 12]}, "classes 0..9"),
        ({"data": images.reshape(2, -1), "labels": ["a", "b"]}, "must be 2 integers"),
        ({"data": np.array([b"x", 1], dtype=object), "labels": [0, 1]}, "uint8 array"),
    ]
    for obj, msg in cases:
        p.write_bytes(pickle.dumps(obj))
        with pytest.raises(InputError, match=msg):
            read_python_batch(p)


def test_missing_cifar_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--data-dir.*cifar100"):
        load_dataset("cifar")
    write_binary(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(InputError, match=r"train batches.*not found.*cifar100"):
        load_dataset("cifar", split="train", data_dir=tmp_path)
    assert torch.is_tensor(load_dataset("cifar", data_dir=tmp_path).images)  # test split still ok
