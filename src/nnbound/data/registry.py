"""``load_dataset``: one entry point for every data source, by name."""

from __future__ import annotations

from pathlib import Path

from nnbound.data.dataset import DEFAULT_INPUT_RANGE, SPLITS, Dataset, check_input_range
from nnbound.errors import InputError

DATASETS: dict[str, str] = {
    "digits": "scikit-learn's bundled 8x8 digits (1, 8, 8); 1347 train / 450 test, no files needed",
    "mnist": "MNIST (1, 28, 28) from IDX files in --data-dir (plain or .gz)",
    "cifar": "CIFAR-10 (3, 32, 32) from the binary or python batches in --data-dir",
    "mnist100": "built in: the first 100 MNIST test images (1, 28, 28)",
    "cifar100": "built in: the first 100 CIFAR-10 (not CIFAR-100) test images (3, 32, 32)",
}
"""Dataset name -> one-line description (what ``load_dataset`` accepts)."""

ALIASES: dict[str, str] = {"cifar10": "cifar"}


def load_dataset(
    name: str,
    *,
    split: str = "test",
    input_range: tuple[float, float] = DEFAULT_INPUT_RANGE,
    data_dir: str | Path | None = None,
) -> Dataset:
    """Load dataset ``name`` (a key of :data:`DATASETS`), pixels scaled to ``input_range``.

    Args:
        name: ``digits``, ``mnist``, ``cifar`` (alias ``cifar10``), ``mnist100``, ``cifar100``.
        split: ``"train"`` or ``"test"`` (built-in sets have only ``"test"``).
        input_range: ``(lo, hi)``; raw pixel ``v`` in ``[0, vmax]`` becomes
            ``v / vmax * (hi - lo) + lo``. The default ``(-0.5, 0.5)`` is the references'.
        data_dir: folder holding the MNIST / CIFAR-10 files (unused for the other sets).

    Returns:
        A :class:`Dataset` with images ``(N, C, H, W)`` float32 and labels ``(N,)`` int64.

    Raises:
        InputError: unknown name or split, bad range, missing or corrupt files.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    input_range = check_input_range(input_range)
    # Each source module is imported on demand so that e.g. sklearn is only loaded for digits.
    if key == "digits":
        from nnbound.data.digits import load_digits

        return load_digits(split, input_range)
    if key == "mnist":
        from nnbound.data.mnist import load_mnist

        return load_mnist(split, input_range, data_dir)
    if key == "cifar":
        from nnbound.data.cifar import load_cifar10

        return load_cifar10(split, input_range, data_dir)
    from nnbound.data.builtin_images import load_builtin

    return load_builtin(key, split, input_range)
