"""Workloads of ``bench_gpu.py``: device helpers, the noisy-image sets, the FLOP counts.

Every function takes the device explicitly and returns wall-clock seconds measured between
two device synchronisations, so the same code times the CPU and a GPU.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from nnbound.data.registry import load_dataset
from nnbound.network.network import Network


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available (as the CLI's ``--device auto``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return dev


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without this a timer stops before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()`` and its wall-clock seconds, the device idle at both ends."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def matmul_rate(device: torch.device, reps: int = 10, trials: int = 3) -> float:
    """Dense float32 matmul FLOP/s at the current precision settings (bench_radius.py's
    measure; a larger n on CUDA, where 2048 does not fill the device). The best of
    ``trials``: on a shared machine one trial can land on a busy moment and understate the
    peak, which would overstate every fraction."""
    n = 8192 if device.type == "cuda" else 2048
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    a @ b  # warm-up: kernel selection, lazy initialisation
    best = min(timed(device, lambda: [a @ b for _ in range(reps)])[1] for _ in range(trials))
    return 2 * n**3 * reps / best


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as torch's FlopCounterMode counts them (matmuls and convolutions;
    elementwise work is not counted, so the fraction it gives is of useful dense work)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def noisy_images(
    dataset: str, count: int, input_range: tuple[float, float], sigma: float, seed: int = 0
) -> Tensor:
    """``count`` images: the 100 built-in ones, then copies with seeded Gaussian noise of
    ``sigma`` times the range width, clipped to the range (the issue's "1,000 MNIST images":
    the built-in set has only 100). Copy 0 is the clean set."""
    base = load_dataset(dataset, input_range=input_range).images
    gen = torch.Generator().manual_seed(seed)
    lo, hi = input_range
    copies = [base]
    while sum(len(c) for c in copies) < count:
        noise = torch.randn(base.shape, generator=gen) * sigma * (hi - lo)
        copies.append((base + noise).clamp(lo, hi))
    return torch.cat(copies)[:count]


def resized_cifar(count: int, size: int) -> Tensor:
    """Real CIFAR-10 test images in [0, 1], bilinearly resized to ``size`` (no ImageNet images
    ship with the package; CLEVER's and PGD's cost does not depend on the content)."""
    x = load_dataset("cifar100", input_range=(0.0, 1.0)).images[:count]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0)


def predictions(net: Network | torch.nn.Module, x: Tensor, chunk: int = 256) -> Tensor:
    """The net's own classes for ``x`` (the labels the radius and attack rows use, so every
    image counts, as for a random network)."""
    with torch.no_grad():
        return torch.cat([net(x[i : i + chunk]).argmax(1) for i in range(0, len(x), chunk)])


def vnncomp_instances(folder: Path, families: list[str], per_family: int) -> list[dict]:
    """An evenly spaced sample of at most ``per_family`` instances of each family of
    ``folder/instances.csv`` (the sample ``bench_verify.py --per-family`` takes)."""
    with open(folder / "instances.csv") as fh:
        rows = list(csv.DictReader(fh))
    out: list[dict] = []
    for family in families:
        chosen = [r for r in rows if r["benchmark"] == family]
        if per_family and len(chosen) > per_family:
            chosen = [chosen[int(i)] for i in np.linspace(0, len(chosen) - 1, per_family)]
        out += [
            {
                "family": family,
                "onnx": folder / r["onnx"],
                "vnnlib": folder / r["vnnlib"],
                "timeout": float(r["timeout_s"]),
                "expected": r.get("expected", ""),
            }
            for r in chosen
        ]
    return out
