"""Convert the small real trained PyTorch networks into nnbound's built-in models.

Reads the authors' state dicts (``MODELS_DIR/*.pth``, loaded with ``weights_only=True``, so no
pickled code runs), loads each into its documented architecture
(:func:`nnbound.network.builtin.builtin_architecture`), converts it with ``from_torch`` (which
checks the IR against PyTorch's own forward), measures the accuracy on the first 100 test
images and writes ``src/nnbound/assets/models/<name>.safetensors`` (nnbound's native format).

For ``cifar-2c2f`` the input normalisation is unknown; the script measures the accuracy with raw
[0, 1] pixels and with the two usual CIFAR-10 mean/std pairs and keeps a Normalize layer only
if one of them is clearly better.

Usage: ``python scripts/make_builtin_models.py [MODELS_DIR] [DATA_DIR] [OUT_DIR]``
(defaults: ``/work/shared/models``, ``/work/shared/data``, ``src/nnbound/assets/models``).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from nnbound.network.builtin import BUILTIN_SOURCES, builtin_architecture
from nnbound.network.from_torch import from_torch, load_state_dict
from nnbound.network.layers import Normalize
from nnbound.network.native import load_network, save_network
from nnbound.network.network import Network, layer_summary

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS_DIR = Path("/work/shared/models")
DEFAULT_DATA_DIR = Path("/work/shared/data")
DEFAULT_OUT_DIR = ROOT / "src" / "nnbound" / "assets" / "models"

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STDS = {
    "std (0.2023, 0.1994, 0.2010)": (0.2023, 0.1994, 0.2010),
    "std (0.2470, 0.2435, 0.2616)": (0.2470, 0.2435, 0.2616),
}


def read_csv(path: Path, hwc: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (N, C, H, W) in [0, 1], labels int64 (N,)) from ``label,v0,...`` rows
    whose values are uint8 in HWC order."""
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    labels, pixels = rows[:, 0], rows[:, 1:]
    images = pixels.reshape(len(rows), *hwc).transpose(0, 3, 1, 2) / 255.0
    return torch.tensor(images, dtype=torch.float32), torch.tensor(labels)


def accuracy(net: Network, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())


def architecture_text(net: Network) -> str:
    return " -> ".join(layer_summary(layer) for layer in net.layers)


def main(argv: list[str]) -> int:
    models_dir = Path(argv[1]) if len(argv) > 1 else DEFAULT_MODELS_DIR
    data_dir = Path(argv[2]) if len(argv) > 2 else DEFAULT_DATA_DIR
    out_dir = Path(argv[3]) if len(argv) > 3 else DEFAULT_OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        (1, 28, 28): read_csv(data_dir / "mnist_test_100.csv", (28, 28, 1)),
        (3, 32, 32): read_csv(data_dir / "cifar10_test_100.csv", (32, 32, 3)),
    }
    for name, (file_name, source, input_shape) in BUILTIN_SOURCES.items():
        module = builtin_architecture(name)
        module.load_state_dict(load_state_dict(models_dir / file_name), strict=True)
        net = from_torch(module, input_shape, input_range=(0.0, 1.0), name=name)
        x, y = data[input_shape]
        acc = accuracy(net, x, y)
        meta = {
            "source": source,
            "original_file": file_name,
            "dataset": "mnist" if input_shape == (1, 28, 28) else "cifar10",
            "input": f"pixels scaled to [0, 1], shape {input_shape} (channels first)",
        }
        if name == "cifar-2c2f":
            trials = {"raw [0, 1] pixels": acc}
            best_label, best_net = "raw [0, 1] pixels", net
            for label, std in CIFAR_STDS.items():
                norm = Normalize(
                    torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
                )
                candidate = replace(net, layers=(norm, *net.layers))
                trials[f"mean (0.4914, 0.4822, 0.4465) {label}"] = accuracy(candidate, x, y)
                # keep a normalisation only when it is clearly (> 5 images) better
                if trials[f"mean (0.4914, 0.4822, 0.4465) {label}"] > trials[best_label] + 0.05:
                    best_label, best_net = f"mean (0.4914, 0.4822, 0.4465) {label}", candidate
            net, acc = best_net, trials[best_label]
            meta["normalization"] = (
                f"{best_label}; first-100 accuracy by input convention: "
                + ", ".join(f"{k}: {v:.2f}" for k, v in trials.items())
            )
        meta["architecture"] = architecture_text(net)
        meta["accuracy_first100"] = f"{acc:.2f}"
        net = net.with_meta(**meta)
        path = save_network(net, out_dir / f"{name}.safetensors")
        back = load_network(path)
        assert all(
            torch.equal(a, b)
            for la, lb in zip(net.layers, back.layers, strict=True)
            for a, b in zip(la.tensors().values(), lb.tensors().values(), strict=True)
        )
        print(f"{name}: accuracy on the first 100 test images {acc:.2f} -> {path}")
        if "normalization" in meta:
            print(f"  normalization: {meta['normalization']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
