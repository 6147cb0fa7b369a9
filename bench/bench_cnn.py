"""CIFAR-size CNNs: certified radius, cost sweep and Jacobian bounds, with peak memory.

Network: ``3x32x32 -> conv(C1, 3x3, s1, p1) -> ReLU -> conv(C1, 4x4, s2, p1) -> ReLU ->
conv(C2, 3x3, s1, p1) -> ReLU -> conv(C2, 4x4, s2, p1) -> ReLU -> Flatten -> Dense(100) -> ReLU
-> Dense(10)`` (the layout ``nnbound train --arch cnn --conv-channels C1 C2 100`` trains), with
C1, C2 = 8, 16 by default (``--channels 16,32`` for the wider net: a CROWN radius on it
takes several minutes per image on a loaded 2-core CPU). Weights are RANDOM (He-normal,
small random biases, seeded), not trained: the cost of a bound does not depend on training,
and the radii of a random net are only indicative. Inputs are the built-in real CIFAR-10
test images (``cifar100``) in [0, 1], each labelled with the net's own prediction (so every
image is "correctly classified").

Rows:
1. certified radius per image (binary search, ``--steps`` evaluations, untargeted = every
   other class) with crown-adaptive and ibp, Linf and L2;
2. the sweep: one crown-adaptive Linf bound call (eps 1e-3, untargeted margins) on the same
   layout with image size 16, 32, 64 (channels C1, C2) and channel pairs (4,8), (8,16),
   (16,32) at size 32 (``--large`` adds (32,64)): how the cost grows;
3. Jacobian bounds: Fast-Lip and RecurJac (backward) local Lipschitz constants of one margin
   (label vs runner-up) over an Linf ball of eps 1e-3 (layer bounds crown-adaptive).

Each measurement runs in a fresh subprocess (spawned) so that its peak memory is its own: on
CPU the increase of ``ru_maxrss`` over the subprocess's baseline after building the net and
inputs (tracemalloc does not see torch's allocator); on CUDA ``torch.cuda.max_memory_allocated``.
Times are wall clock, torch threads 1 by default (``--threads``), so numbers are comparable on
a shared machine but are per core.

auto_LiRPA is not compared: its PyPI release needs torch < 1.13 and cannot be installed next
to this torch. The reference (RecurJac / CROWN numpy code) has no conv support at all.

Usage: python bench/bench_cnn.py [--images 2] [--steps 8] [--device cpu|cuda] [--quick]
       [--large] [--no-sweep] [--no-jacobian] [--threads 1]
``--quick``: 1 image, 4 steps, sizes 16 and 32, channels (4,8) and (8,16); ``--large``: 5
images, 15 steps and a (32,64)-channel sweep point (long: CROWN's cost grows about with the
square of the hidden neurons).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import time
from typing import Any

import torch

from nnbound.report.tables import render_table


def cifar_cnn(
    size: int = 32,
    channels: tuple[int, int] = (16, 32),
    hidden: int = 100,
    seed: int = 0,
    device: str = "cpu",
) -> Any:
    """The 4-conv + 2-dense CIFAR-layout ReLU network with random He-normal weights."""
    from nnbound.network.layers import Activation, Conv2d, Dense, Flatten
    from nnbound.network.network import Network

    gen = torch.Generator().manual_seed(seed)

    def conv(c_in: int, c_out: int, k: int, stride: int) -> Conv2d:
        w = torch.randn(c_out, c_in, k, k, generator=gen) * math.sqrt(2.0 / (c_in * k * k))
        return Conv2d(w, torch.randn(c_out, generator=gen) * 0.05, stride=stride, padding=1)

    def dense(n_in: int, n_out: int) -> Dense:
        w = torch.randn(n_out, n_in, generator=gen) * math.sqrt(2.0 / n_in)
        return Dense(w, torch.randn(n_out, generator=gen) * 0.05)

    c1, c2 = channels
    relu = Activation("relu")
    layers = [conv(3, c1, 3, 1), relu, conv(c1, c1, 4, 2), relu]
    layers += [conv(c1, c2, 3, 1), relu, conv(c2, c2, 4, 2), relu]
    flat = c2 * (size // 4) ** 2
    layers += [Flatten(), dense(flat, hidden), relu, dense(hidden, 10)]
    net = Network(tuple(layers), (3, size, size), input_range=(0.0, 1.0), name="cifar-cnn")
    return net.to(device=torch.device(device))


def images(n: int, size: int, device: str) -> torch.Tensor:
    """``n`` real CIFAR-10 test images in [0, 1], resized to ``size`` (bilinear)."""
    from nnbound.data.registry import load_dataset

    x = load_dataset("cifar100", split="test", input_range=(0.0, 1.0)).images[:n]
    if size != 32:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    return x.clamp(0, 1).to(torch.device(device))


def _peak_start(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_end(device: str, start: int) -> float:
    """Peak memory of the measured call in MiB (over the baseline)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start) / 2**20


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement, run in a fresh subprocess."""
    torch.set_num_threads(job["threads"])
    from nnbound.bounds.api import bounds
    from nnbound.jacobian import lipschitz_bounds
    from nnbound.sets.lp_ball import LpBall
    from nnbound.tasks.radius import certified_radius, margin_specs

    dev = job["device"]
    if job.get("model"):
        # A real trained CNN on real CIFAR-10 test images it classifies correctly.
        from nnbound.data.registry import load_dataset
        from nnbound.network.load import load_model

        net = load_model(job["model"]).to(device=dev)
        ds = load_dataset("cifar100")
        xs = net.check_input(ds.images.to(dev))
        with torch.no_grad():
            ok = net(xs).argmax(1).cpu() == ds.labels
        x = xs[ok.to(dev)][: job["images"]]
    else:
        net = cifar_cnn(job["size"], job["channels"], device=dev)
        x = images(job["images"], job["size"], dev)
    with torch.no_grad():
        logits = net(x)
    labels = logits.argmax(1)
    untargeted = torch.full_like(labels, -1)
    out: dict[str, Any] = {}
    kind = job["kind"]
    if kind == "radius":  # a tiny warm-up (kernels, lazy imports) before the baseline
        certified_radius(net, x[:1], labels[:1], untargeted[:1], norm="inf", method="ibp", steps=1)
    start = _peak_start(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        if kind == "radius":
            r = certified_radius(
                net, x, labels, untargeted, norm=job["norm"], method=job["method"],
                steps=job["steps"],
            )  # fmt: skip
            out["value"] = float(r.mean())
        elif kind == "bound":
            spec = margin_specs(labels, untargeted, logits.shape[1], logits.dtype)
            b = bounds(net, LpBall.make(x, 1e-3, math.inf), job["method"], spec)
            out["value"] = float(b.lower.min())
        else:  # jacobian
            runner = logits.argsort(1, descending=True)[:, 1]
            spec = margin_specs(labels, runner, logits.shape[1], logits.dtype)
            lb = lipschitz_bounds(
                net, LpBall.make(x, 1e-3, math.inf), spec, job["method"], "crown-adaptive"
            )
            out["value"] = float(lb.value.mean())
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - t0
    out["peak_mib"] = _peak_end(dev, start)
    return out


def run(job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measure, (job,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1 image, 4 steps, small sweep")
    ap.add_argument("--large", action="store_true", help="5 images, 15 steps, bigger sweep")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-jacobian", action="store_true")
    ap.add_argument("--channels", default="8,16", help="C1,C2 of the radius / Jacobian rows")
    args = ap.parse_args()
    chan = tuple(int(c) for c in args.channels.split(","))
    label = f"{chan[0]},{chan[1]}"
    n_img, steps = args.images, args.steps
    sizes, chans = [16, 32, 64], [(4, 8), (8, 16), (16, 32)]
    if args.quick:
        n_img, steps, sizes, chans = 1, 4, [16, 32], [(4, 8), (8, 16)]
    if args.large:
        n_img, steps, chans = 5, 15, [*chans, (32, 64)]
    base = {"device": args.device, "threads": args.threads, "size": 32, "channels": chan}
    net = cifar_cnn(channels=chan)
    print(
        f"network: {net.shapes[0]} -> {' -> '.join(str(s) for s in net.shapes[1::2])}; "
        f"{net.num_parameters} parameters; random weights (the cifar-2c2f rows: trained); "
        f"device {args.device}, "
        f"torch threads {args.threads}",
        flush=True,
    )
    rows = []
    for method in ("crown-adaptive", "ibp"):
        for norm in ("inf", "2"):
            job = {**base, "kind": "radius", "method": method, "norm": norm}
            res = run({**job, "images": n_img, "steps": steps})
            rows.append(
                [
                    "radius",
                    method,
                    f"L{norm}",
                    "3x32x32",
                    label,
                    n_img,
                    res["value"],
                    res["seconds"] / n_img,
                    res["peak_mib"],
                ]
            )
            print("row", rows[-1], flush=True)
    # The built-in trained CIFAR CNN (auto_LiRPA's cifar_2c2f: conv 4, conv 4, dense 32, 10).
    for norm in ("inf", "2"):
        job = {**base, "kind": "radius", "method": "crown-adaptive", "norm": norm}
        res = run({**job, "model": "cifar-2c2f", "images": n_img, "steps": steps})
        rows.append(
            [
                "radius (trained cifar-2c2f)",
                "crown-adaptive",
                f"L{norm}",
                "3x32x32",
                "4,4",
                n_img,
                res["value"],
                res["seconds"] / n_img,
                res["peak_mib"],
            ]
        )
        print("row", rows[-1], flush=True)
    if not args.no_sweep:
        points = [(s, chan) for s in sizes] + [(32, c) for c in chans if c != chan]
        for size, ch in points:
            job = {**base, "kind": "bound", "method": "crown-adaptive", "norm": "inf"}
            res = run({**job, "size": size, "channels": ch, "images": 1, "steps": 0})
            rows.append(
                [
                    "1 bound call",
                    "crown-adaptive",
                    "Linf",
                    f"3x{size}x{size}",
                    f"{ch[0]},{ch[1]}",
                    1,
                    res["value"],
                    res["seconds"],
                    res["peak_mib"],
                ]
            )
            print("row", rows[-1], flush=True)
    if not args.no_jacobian:
        for method in ("fastlip", "recurjac"):
            job = {**base, "kind": "jacobian", "method": method, "norm": "inf"}
            res = run({**job, "images": 1, "steps": 0})
            rows.append(
                [
                    "local Lipschitz",
                    method,
                    "Linf",
                    "3x32x32",
                    label,
                    1,
                    res["value"],
                    res["seconds"],
                    res["peak_mib"],
                ]
            )
            print("row", rows[-1], flush=True)
    print(
        render_table(
            [
                "task",
                "method",
                "norm",
                "input",
                "channels",
                "images",
                "mean value",
                "s/image",
                "peak MiB",
            ],
            rows,
            digits=4,
        )
    )
    print(
        "value: mean certified radius (radius rows), lowest margin lower bound at eps 1e-3 "
        "(bound rows), mean local Lipschitz constant at eps 1e-3 (Lipschitz rows)"
    )


if __name__ == "__main__":
    main()
