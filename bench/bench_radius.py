"""Certified-radius speed: nnbound vs the reference's published figure, side by side.

Networks: 784-1024-1024-10 and 784-[1024]x6-10 ReLU MLPs trained here for a few epochs on
scikit-learn's digits upscaled to 28x28 (real handwritten digits; MNIST itself is not
available offline), inputs in [-0.5, 0.5] as the references. 100 correctly classified test
images, untargeted, 15 binary-search steps, Linf and L2, CROWN-adaptive.

Anchors (not re-run here, printed for the ratio):
* reference (numpy + numba): CROWN-adaptive on an MNIST 3x[1024] MLP, 96 images in 85.4 s
  = 0.89 s per image (its authors' machine);
* auto_LiRPA CROWN: about 0.1 s per bound call on such a net on this kind of machine
  (its PyPI release 0.3 requires torch < 1.13 and does not import with torch 2.13 / numpy 2).

Also printed: the machine's measured float32 matmul rate, the FLOPs per image (counted by
torch's FlopCounterMode in a second run on the first ``--flop-images`` images, since the
counter slows a run down), the fraction of the matmul rate the timed run achieves, and the
rate of the matrix products alone (their FLOPs over the time spent in them, from torch's
profiler in a third run on those images; float64 products count at the float32 rate).

Usage: python bench/bench_radius.py [--images 100] [--steps 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from nnbound.data.dataset import Dataset
from nnbound.data.registry import load_dataset
from nnbound.network.network import Network
from nnbound.report.tables import render_table
from nnbound.tasks.radius import certified_radius
from nnbound.train.train import TrainConfig, train_network

REFERENCE_S_PER_IMAGE = 85.4 / 96
AUTO_LIRPA_S_PER_CALL = 0.1


def upscaled_digits(split: str) -> Dataset:
    ds = load_dataset("digits", split=split)
    img = F.interpolate(ds.images, size=(28, 28), mode="bilinear", align_corners=False)
    return Dataset(
        img.clamp(-0.5, 0.5),
        ds.labels,
        "digits28",
        ds.input_range,
        ds.class_names,
        "sklearn digits, bilinear 8x8 -> 28x28",
    )


def matmul_rate(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


_PRODUCT_OPS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm", "aten::addmv", "aten::mv")


def matrix_product_rate(
    net: Network, x: Tensor, labels: Tensor, targets: Tensor, norm: str, steps: int
) -> float:
    """FLOP/s of the matrix products alone (their FLOPs over the time spent in them, from
    torch's profiler) in a run on ``x``: how close the dominant products come to the
    machine's matmul rate, apart from everything around them."""
    with torch.no_grad(), profile(with_flops=True) as prof:
        certified_radius(net, x, labels, targets, norm=norm, steps=steps)
    events = [e for e in prof.key_averages() if e.key in _PRODUCT_OPS]
    flop = sum(e.flops for e in events)
    on_gpu = x.device.type != "cpu"
    micros = sum(e.self_device_time_total if on_gpu else e.self_cpu_time_total for e in events)
    return flop / (micros / 1e6) if micros > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flop-images", type=int, default=10, help="images the FLOPs are counted on")
    ap.add_argument("--nets", default="3,7", help="comma list of layer counts (3 = 2 hidden)")
    args = ap.parse_args()
    device = torch.device(args.device)
    train, test = upscaled_digits("train"), upscaled_digits("test")
    rate = matmul_rate(device)
    rows = []
    for layers in (int(v) for v in args.nets.split(",")):
        cfg = TrainConfig(hidden=(1024,) * (layers - 1), epochs=args.epochs, seed=0)
        net, rep = train_network(train, test, cfg, progress=False)
        net = net.to(device=device)
        with torch.no_grad():
            pred = net(net.check_input(test.images.to(device))).argmax(1).cpu()
        ok = torch.nonzero(pred == test.labels).squeeze(1)[: args.images]
        x = net.check_input(test.images[ok].to(device))
        labels = test.labels[ok]
        targets = torch.full_like(labels, -1)
        for norm in ("inf", "2"):
            certified_radius(net, x[:2], labels[:2], targets[:2], norm=norm, steps=2)  # warm-up
            t0 = time.perf_counter()
            with torch.no_grad():
                r = certified_radius(
                    net, x, labels, targets, norm=norm, method="crown-adaptive", steps=args.steps
                )
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            # FLOPs from a second run on the first --flop-images images (the counter's per-op
            # hooks slow a run down, so the timed run goes without it).
            k = min(args.flop_images, len(labels))
            flops = FlopCounterMode(display=False)
            with torch.no_grad(), flops:
                certified_radius(net, x[:k], labels[:k], targets[:k], norm=norm, steps=args.steps)
            product_rate = matrix_product_rate(
                net, x[:k], labels[:k], targets[:k], norm, args.steps
            )
            per = dt / len(labels)
            flop_per_image = flops.get_total_flops() / k
            rows.append(
                [
                    f"784-{'-'.join(['1024'] * (layers - 1))}-10",
                    f"L{norm}",
                    len(labels),
                    float(r.mean()),
                    per,
                    REFERENCE_S_PER_IMAGE / per,
                    flop_per_image / 1e9,
                    flop_per_image / per / 1e9,
                    flop_per_image / per / rate,
                    product_rate / 1e9,
                    product_rate / rate,
                ]
            )
            print(
                f"done {rows[-1][0]} {rows[-1][1]} ({rep.test_accuracy * 100:.1f}% acc)", flush=True
            )
    print(
        f"\ndevice {device}, torch threads {torch.get_num_threads()}, measured float32 matmul "
        f"rate {rate / 1e9:.1f} GFLOP/s; reference {REFERENCE_S_PER_IMAGE:.3f} s/image, "
        f"auto_LiRPA ~{AUTO_LIRPA_S_PER_CALL} s per bound call (x{args.steps} steps per image)"
    )
    print(
        render_table(
            [
                "network",
                "norm",
                "images",
                "mean radius",
                "s/image",
                "x faster than ref",
                "GFLOP/image",
                "GFLOP/s",
                "of matmul rate",
                "products GFLOP/s",
                "products of rate",
            ],
            rows,
            digits=4,
        )
    )


if __name__ == "__main__":
    main()
