"""Jacobian-bound speed: the seed's `lipschitz` and `landscape` example flows, timed.

* `lipschitz`: 20 log-spaced eps in [1e-3, 1] plus eps = 0, one image, Linf, CROWN-adaptive
  layer bounds + RecurJac (and Fast-Lip for comparison), on a 784-[1024]x6-10 ReLU MLP trained
  here for a few epochs on scikit-learn's digits upscaled to 28x28 (MNIST is not available
  offline; the reference's own model files cannot be downloaded).
* `landscape`: R_max for class-1 images, L2, CROWN-general + RecurJac, --lipsteps 1, on a
  5-layer leaky-ReLU (0.3) MLP of width 20 trained on 28x28 digits.

The reference publishes no timings for these two flows and cannot run here (TensorFlow 1 +
numba on numpy < 2), so the table reports nnbound's times alone.

Usage: python bench/bench_jacobian.py [--images 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_radius import upscaled_digits

from nnbound.report.tables import render_table
from nnbound.tasks.landscape import landscape
from nnbound.tasks.lipschitz import eps_grid, lipschitz_curve, saturation_index
from nnbound.train.train import TrainConfig, train_network


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=10, help="images for landscape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    train, test = upscaled_digits("train"), upscaled_digits("test")
    rows = []

    deep, _ = train_network(
        train, test, TrainConfig(hidden=(1024,) * 6, epochs=args.epochs, seed=0), progress=False
    )
    deep = deep.to(device=device)
    x = deep.check_input(test.images[test.labels == 1][:1].to(device))
    grid = eps_grid(1.0, 20, -3, 0).to(device)
    for method in ("recurjac", "fastlip"):
        t0 = time.perf_counter()
        curve = lipschitz_curve(
            deep,
            x,
            torch.tensor([1]),
            grid,
            norm="inf",
            method=method,
            layer_method="crown-adaptive",
        )
        dt = time.perf_counter() - t0
        values = curve.values.reshape(-1)
        sat = saturation_index(values)
        rows.append(
            [
                f"lipschitz {method}",
                "784-[1024]x6-10",
                "Linf",
                1,
                dt,
                f"L(0)={float(values[0]):.4g}, L(1)={float(values[-1]):.4g}, saturates "
                f"at eps={float(grid[sat]):.3g}"
                if sat is not None
                else "not saturated",
            ]
        )

    leaky, _ = train_network(
        train,
        test,
        TrainConfig(
            hidden=(20,) * 4, activation="leaky", leaky_slope=0.3, epochs=20, lr=0.01, seed=0
        ),
        progress=False,
    )
    leaky = leaky.to(device=device)
    ones = test.images[test.labels == 1][: args.images].to(device)
    xs = leaky.check_input(ones)
    t0 = time.perf_counter()
    r_max, curve = landscape(
        leaky,
        xs,
        torch.ones(xs.shape[0], dtype=torch.long),
        norm=2,
        method="recurjac",
        layer_method="crown-general",
        eps0=0.1,
        lipsteps=1,
    )
    dt = time.perf_counter() - t0
    rows.append(
        [
            "landscape recurjac",
            "784-20x4-10 leaky",
            "L2",
            xs.shape[0],
            dt,
            f"avg R_max={float(r_max.mean()):.4f}, "
            f"avg L(R_max)={float(curve.values[:, -1].mean()):.4f}",
        ]
    )
    print(f"\ndevice {device}, torch threads {torch.get_num_threads()}")
    print(render_table(["flow", "network", "norm", "images", "seconds", "result"], rows, digits=2))


if __name__ == "__main__":
    main()
