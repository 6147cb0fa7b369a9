"""Issue acceptance ("CNNs in every bound method, CIFAR-size"): a CIFAR-shaped CNN (3x32x32,
4 conv + 2 dense, ReLU) trained by ``nnbound train --arch cnn`` from CIFAR-10 binary batch
files, then ``robustness`` (CROWN-adaptive and the Fast-Lip Jacobian radius), ``evaluate``
(certified <= attack) and ``lipschitz`` (RecurJac) on it, all through the CLI, in process.

The batch files are written here from the 100 real CIFAR-10 test images nnbound ships (the
same images in the train and test batches: the point is the pipeline, not generalisation).
The model is tiny (2 and 4 channels) so the whole file runs in well under 30 s on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.cli.main import main
from nnbound.data.builtin_images import load_builtin_arrays
from nnbound.network.layers import Conv2d, Dense
from nnbound.network.load import load_model

torch.set_num_threads(1)


def _write_batches(folder: Path) -> None:
    """CIFAR-10 binary batches (1 label byte + 3072 CHW pixel bytes per record)."""
    images, labels = load_builtin_arrays("cifar100")
    folder.mkdir(parents=True)

    def write(name: str, x: np.ndarray, y: np.ndarray) -> None:
        rows = np.concatenate([y.reshape(-1, 1).astype(np.uint8), x.reshape(len(x), -1)], 1)
        (folder / name).write_bytes(rows.astype(np.uint8).tobytes())

    for i in range(5):
        part = slice(20 * i, 20 * (i + 1))
        write(f"data_batch_{i + 1}.bin", images[part], labels[part])
    write("test_batch.bin", images, labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cifar")
    _write_batches(root / "cifar-10-batches-bin")
    model = root / "cnn.safetensors"
    argv = ["train", "16", "--arch", "cnn", "--conv-channels", "2", "4"]
    argv += ["--dataset", "cifar", "--data-dir", str(root), "--epochs", "12"]
    argv += ["--batch-size", "20", "--lr", "0.003", "--out", str(model), "--quiet"]
    assert main(argv) == 0
    return root, model


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_trained_network_is_cifar_shaped(trained: tuple[Path, Path]) -> None:
    net = load_model(trained[1])
    assert net.input_shape == (3, 32, 32)
    assert sum(isinstance(layer, Conv2d) for layer in net.layers) == 4
    assert sum(isinstance(layer, Dense) for layer in net.layers) == 2
    assert net.num_outputs == 10


def test_robustness_evaluate_lipschitz(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, model = trained
    data = [str(model), "--dataset", "cifar", "--data-dir", str(root), "--quiet", "--json"]
    rob = _json(
        capsys,
        [
            "robustness",
            *data,
            "--numimage",
            "2",
            "--layerbndalg",
            "crown-adaptive",
            "--steps",
            "5",
            "--jacbndalg",
            "fastlip",
            "--lipsteps",
            "2",
        ],
    )
    assert rob["images"], "no correctly classified image"
    for rec in rob["images"]:
        assert rec["radius"] > 0 and rec["radius_jacobian"] > 0

    ev = _json(
        capsys,
        [
            "evaluate",
            *data,
            "--numimage",
            "2",
            "--methods",
            "crown,ibp,pgd",
            "--steps",
            "5",
            "--pgd-steps",
            "10",
            "--pgd-search-steps",
            "4",
        ],
    )
    records = ev["records"] if "records" in ev else ev["images"]
    assert records
    assert all(r["verdict"] != "BUG" for r in records)

    lip = _json(
        capsys,
        [
            "lipschitz",
            *data,
            "--numimage",
            "1",
            "--jacbndalg",
            "recurjac",
            "--lipsteps",
            "2",
            "--eps",
            "0.002",
        ],
    )
    (img,) = lip["images"]
    # eps = 0: the bound is the gradient's dual norm; larger balls never give less.
    assert img["eps0_matches_gradient"]
    values = img["lipschitz"]
    assert values[0] >= img["grad_norm"] * (1 - 1e-4)
    assert values == sorted(values)
