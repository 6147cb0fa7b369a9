"""Lipschitz sweeps (RecurJac, Fast-Lip) against the 2018 reference code, side by side.

The ``lipschitz`` task's flow: local Lipschitz constants of the predicted logit over Linf
balls of 21 radii (``[0] + logspace(-3, 0, 20)``, the reference's ``--liplogstart -3
--liplogend 0 --lipsteps 20``), CROWN-general layer bounds, backward RecurJac (and Fast-Lip),
one image, float32, on

* ``mnist-fc-3layer`` (784-128-64-10, trained) at the first built-in MNIST test image;
* a 784-[1024]x6-10 ReLU MLP (the reference's ``mnist_7layer_relu_1024`` shape) with seeded
  random weights (N(0, 1/fan_in), biases N(0, 0.25)) at a seeded random image.

``--quick``: 6 radii (``logspace(-3, 0, 5)``) and a 784-[256]x3-10 MLP in place of the 7x1024.

Columns: the 2018 code (its numpy/numba core called per radius with weight lists, as its
``task_lipschitz`` does, after a warm-up that compiles the kernels -- a whole untimed sweep
for nets under 2M weights, where JIT time would otherwise dominate; skipped without a
checkout or without numba), nnbound's sweep (``lipschitz_curve``), nnbound's single
batched pass over the ``(1, K)`` ball (``lipschitz_bounds``, what the sweep replaced), the
ratio 2018 / sweep, and the largest value difference between the 2018 code and the sweep
(absolute, and relative to the value). Seconds are the best of 5 turns (the columns taking
turns) with their range on nets under 2M weights, whose sweeps take a fraction of a second,
and one run on the larger one.

Usage: python bench/peers_lipschitz.py --reference-code /tmp/peers/recurjac [--threads 1]
       [--quick]   (the 2018 column needs numba in the running interpreter)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers_common import best_with_range
from recurjac2018 import load_reference, reference_sweep

from nnbound.data.registry import load_dataset
from nnbound.jacobian.lipschitz import lipschitz_bounds
from nnbound.network.layers import Activation, Dense
from nnbound.network.load import load_model
from nnbound.network.network import Network
from nnbound.report.tables import render_table
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks.lipschitz import class_spec, eps_grid, lipschitz_curve

HEADER = [
    "network",
    "method",
    "radii",
    "2018 code s",
    "nnbound sweep s",
    "nnbound one pass s",
    "2018 / sweep",
    "max |diff|",
    "max rel diff",
]
LAYER_METHOD = "crown-general"
# timed turns per column on nets under 2M weights (see :func:`section`)
SMALL_NET_REPEATS = 5


def random_mlp(widths: list[int], seed: int = 0) -> Network:
    """A seeded random ReLU MLP, float32."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[object] = []
    for i in range(len(widths) - 1):
        w = torch.randn(widths[i + 1], widths[i], generator=gen) / math.sqrt(widths[i])
        b = torch.randn(widths[i + 1], generator=gen) * 0.5
        layers.append(Dense(w, b))
        if i < len(widths) - 2:
            layers.append(Activation("relu"))
    shape = "-".join(str(w) for w in widths)
    return Network(tuple(layers), (widths[0],), name=f"random {shape}")


def _cases(quick: bool) -> list[tuple[str, Network, torch.Tensor]]:
    fc3 = load_model("mnist-fc-3layer")
    image = load_dataset("mnist100", split="test", input_range=fc3.input_range).images[:1]
    widths = [784, 256, 256, 256, 10] if quick else [784] + [1024] * 6 + [10]
    mlp = random_mlp(widths)
    x = torch.rand(1, 784, generator=torch.Generator().manual_seed(0))
    name = "784-[256]x3-10 random" if quick else "784-[1024]x6-10 random"
    return [("mnist-fc-3layer", fc3, fc3.check_input(image)), (name, mlp, x)]


def _nnbound(net: Network, x: torch.Tensor, label: int, grid: torch.Tensor, method: str):
    t0 = time.perf_counter()
    curve = lipschitz_curve(
        net, x, torch.tensor([label]), grid, method=method, layer_method=LAYER_METHOD
    )
    sweep_s = time.perf_counter() - t0
    ball = LpBall.make(x, grid.unsqueeze(0).to(x.dtype), "inf")
    t0 = time.perf_counter()
    with torch.no_grad():
        lipschitz_bounds(net, ball, class_spec(torch.tensor([label]), 10, x.dtype), method)
    return curve.values.reshape(-1).numpy(), sweep_s, time.perf_counter() - t0


def _seconds(times: list[float]) -> str:
    """The best of ``times``, with their range when there are several."""
    return f"{times[0]:.3f}" if len(times) == 1 else best_with_range(times, 3)


def section(
    reference_code: Path | None, threads: int, quick: bool
) -> tuple[str, list[str], list[list[object]]]:
    """The bench's table: ``(title, header, rows)``. Nets under 2M weights (a sweep in well
    under a second, where a shared machine's noise is a large part of one timing) take
    :data:`SMALL_NET_REPEATS` turns per column, the 2018 code's and nnbound's alternating;
    the ratio is of the best times."""
    torch.set_num_threads(threads)
    core = load_reference(reference_code, threads)
    grid = eps_grid(1.0, 5 if quick else 20, -3, 0)
    rows: list[list[object]] = []
    for name, net, x in _cases(quick):
        with torch.no_grad():
            label = int(net(x).argmax())
        small = net.num_parameters < 1 << 21
        repeats = SMALL_NET_REPEATS if small else 1
        for method in ("recurjac", "fastlip"):
            lipschitz_curve(net, x, torch.tensor([label]), grid[:3], method=method)  # warm-up
            sweep_s: list[float] = []
            pass_s: list[float] = []
            ref_s: list[float] = []
            values = None
            for turn in range(repeats):
                ours, s_sweep, s_pass = _nnbound(net, x, label, grid, method)
                sweep_s.append(s_sweep)
                pass_s.append(s_pass)
                if core is not None:
                    values, seconds = reference_sweep(
                        core,
                        net,
                        x,
                        label,
                        grid.tolist(),
                        jacbndalg=method,
                        layerbndalg=LAYER_METHOD,
                        # steady state where that costs little: a whole untimed sweep first
                        warm_sweep=small and turn == 0,
                    )
                    ref_s.append(seconds)
            diff, rel, ratio = "-", "-", "-"
            if values is not None:
                d = np.abs(ours - values)
                diff, rel = f"{d.max():.2g}", f"{(d / np.abs(values)).max():.2g}"
                ratio = f"{min(ref_s) / min(sweep_s):.1f}x"
            rows.append(
                [
                    name,
                    method,
                    len(grid),
                    _seconds(ref_s) if ref_s else "-",
                    _seconds(sweep_s),
                    _seconds(pass_s),
                    ratio,
                    diff,
                    rel,
                ]
            )
    title = (
        f"Lipschitz sweeps vs the 2018 code (Linf, {LAYER_METHOD} layer bounds, backward "
        f"RecurJac / Fast-Lip, {len(grid)} radii, one image, float32; {threads} thread(s); "
        f"seconds: best of {SMALL_NET_REPEATS} [range] on nets under 2M weights, else one run)"
    )
    return title, HEADER, rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reference-code", type=Path, default=None, help="2018 code checkout")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="6 radii, a 784-[256]x3-10 MLP")
    args = ap.parse_args()
    title, header, rows = section(args.reference_code, args.threads, args.quick)
    print(title)
    print(render_table(header, rows))


if __name__ == "__main__":
    main()
