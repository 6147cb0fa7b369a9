"""load_array: .npy / .npz without pickle, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnbound.data import load_array
from nnbound.errors import InputError


def test_npy_round_trip(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    out = load_array(tmp_path / "a.npy")
    assert out.dtype == np.float32 and np.array_equal(out, a)
    assert np.array_equal(load_array(str(tmp_path / "a.npy")), a)


def test_npz_key_choice(tmp_path: Path) -> None:
    a, b, c = np.zeros(2), np.ones(3), np.full(4, 2.0)
    np.savez(tmp_path / "first.npz", z=a, y=b)
    assert np.array_equal(load_array(tmp_path / "first.npz"), a)
    np.savez(tmp_path / "x.npz", z=a, x=b, images=c)
    assert np.array_equal(load_array(tmp_path / "x.npz"), b)
    np.savez_compressed(tmp_path / "img.npz", z=a, images=c)
    assert np.array_equal(load_array(tmp_path / "img.npz"), c)
    assert np.array_equal(load_array(tmp_path / "img.npz", key="z"), a)
    with pytest.raises(InputError, match=r"no array 'w'.*z, images"):
        load_array(tmp_path / "img.npz", key="w")
    np.save(tmp_path / "a.npy", a)
    with pytest.raises(InputError, match=r"single array"):
        load_array(tmp_path / "a.npy", key="x")


def test_format_is_sniffed_not_taken_from_the_name(tmp_path: Path) -> None:
    a = np.arange(3)
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "a.npy").rename(tmp_path / "a.bin")
    assert np.array_equal(load_array(tmp_path / "a.bin"), a)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"file not found") as exc:
        load_array(tmp_path / "nope.npy")
    assert "nope.npy" in str(exc.value)
    with pytest.raises(InputError, match=r"is a folder"):
        load_array(tmp_path)


def test_corrupt_files(tmp_path: Path) -> None:
    p = tmp_path / "junk.npy"
    p.write_bytes(b"hello world, not numpy")
    with pytest.raises(InputError, match=r"not a .npy or .npz"):
        load_array(p)
    np.save(tmp_path / "a.npy", np.arange(100.0))
    data = (tmp_path / "a.npy").read_bytes()
    p.write_bytes(data[:-40])
    with pytest.raises(InputError, match=r"corrupt array file"):
        load_array(p)
    p.write_bytes(data[:20])
    with pytest.raises(InputError, match=r"corrupt array file"):
        load_array(p)
    np.savez(tmp_path / "z.npz", x=np.arange(100.0))
    z = (tmp_path / "z.npz").read_bytes()
    q = tmp_path / "bad.npz"
    q.write_bytes(z[: len(z) // 2])
    with pytest.raises(InputError, match=r"corrupt array file"):
        load_array(q)
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(InputError, match=r"holds no arrays"):
        load_array(tmp_path / "empty.npz")


def test_object_and_non_numeric_arrays_are_refused(tmp_path: Path) -> None:
    obj = np.array([{"a": 1}, None], dtype=object)
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    with pytest.raises(InputError, match=r"object \(pickled\) array"):
        load_array(tmp_path / "o.npy")
    np.savez(tmp_path / "o.npz", x=obj)
    with pytest.raises(InputError, match=r"object \(pickled\) array"):
        load_array(tmp_path / "o.npz")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(InputError, match=r"dtype <U1.*numeric"):
        load_array(tmp_path / "s.npy")
    np.save(tmp_path / "c.npy", np.zeros(2, dtype=np.complex64))
    with pytest.raises(InputError, match=r"numeric"):
        load_array(tmp_path / "c.npy")
