"""GPU benchmark (runs unchanged on the CPU): certified radius, CLEVER, PGD and verification.

Workloads (one table row each):

* radius: ``certified_radius`` (crown-adaptive, Linf, 15 binary-search steps, untargeted, as
  ``bench_radius.py``) on 1,000 MNIST images -- the 100 built-in ones, then copies with seeded
  Gaussian noise (sigma 1% of the range) -- for ``mnist-fc-3layer`` (trained), the
  784-1024-1024-10 ("3x1024") and 784-[1024]x6-10 ("7x1024") random MLPs of
  ``peers_common.random_mlp``, and the built-in CIFAR CNN ``cifar-2c2f`` on noisy copies of
  the 100 built-in CIFAR images. Labels are each net's own predictions, so every image counts.
  Batching is the CLI's (``nnbound robustness``): spans of 1, 2, 4, ... up to
  ``--batch-size`` (100) images per ``certified_radius`` call.
* CLEVER: ``Clever`` (reference sampling, 500 batches x 1024 samples, one target: top2) on one
  image per ``resnet50`` (random weights, seed 0) at 224x224, the image a built-in CIFAR one
  resized; seconds per image include the Weibull fits.
* PGD: fixed-budget Linf PGD (50 steps, 1 restart) per image on mnist-fc-3layer (eps 0.1)
  and resnet50 (eps 2/255).
* verify: ``verify_files`` on an evenly spaced sample of the shared VNN-COMP instances
  (families ``mnist_fc`` and ``acasxu``), each at min(its timeout, ``--verify-cap``).

``matmul rate fraction`` = the workload's dense FLOPs (matmuls and convolutions, counted by
torch's FlopCounterMode on a few images in a separate run, as ``bench_radius.py`` does) over
its time, divided by the float32 matmul rate measured on the same device in the same run
(the best of a measurement before and one after the work, so a busy moment on a shared
machine does not understate the peak). CLEVER and PGD count one forward + input-gradient
pass per sample (times samples, or steps + 1 per image). On CUDA, cuDNN convolutions use
TF32 by default while the float32 matmul peak is measured at torch's matmul precision setting
(printed), so the convolution-heavy rows can exceed 1.

Targets on one H200 (``met?`` says yes/NO only on an H200 and at the target's size):
1,000 mnist-fc-3layer images in under 0.3 s; 7x1024 under 5 ms/image; CLEVER at 1024 x 500
samples on ResNet-50 (224x224) under 10 s per image.

``--quick`` (CPU-sized, labelled in the rows): 100 images (3x1024: 50, 7x1024: 8,
cifar-2c2f: 10), CLEVER at 64x64 with 16 batches x 32 samples, PGD with 10 steps (2 resnet50
images), 2 verify instances per family at a 10 s cap.

Usage: python bench/bench_gpu.py [--device auto|cpu|cuda] [--quick]
       [--only radius,clever,pgd,verify] [--threads N] [--images N] [--clever-batches N]
(explicit counts override --quick's; see --help)
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gpu_workloads import (
    count_flops,
    device_name,
    matmul_rate,
    noisy_images,
    predictions,
    resized_cifar,
    resolve_device,
    timed,
    vnncomp_instances,
)
from peers_common import random_mlp

from nnbound.attacks import PGD
from nnbound.catalogue import build_model
from nnbound.clever import Clever
from nnbound.cli.cmd_verify import verdict
from nnbound.cli.stream import growing_spans
from nnbound.errors import NnboundError
from nnbound.network.load import load_model
from nnbound.network.network import Network
from nnbound.report.tables import render_table
from nnbound.tasks.radius import certified_radius
from nnbound.verify.verifier import verify_files

HEADERS = [
    "workload",
    "model",
    "device",
    "dtype",
    "items",
    "setting",
    "total s",
    "per item",
    "result",
    "target (H200)",
    "met?",
    "matmul rate fraction",
]
VNNCOMP_DIRS = (
    Path(__file__).resolve().parent.parent / "shared" / "benchmarks" / "vnncomp",
    Path("/work/shared/benchmarks/vnncomp"),
)


@dataclass(frozen=True)
class RadiusNet:
    """One radius row: how to build the net, its image set, its quick count, its target."""

    label: str
    build: Callable[[], Network]
    dataset: str
    quick_count: int
    target: str = "-"
    # (seconds, images) -> met; None where the issue sets no target.
    check: Callable[[float, int], bool] | None = None


def _builtin(name: str) -> Callable[[], Network]:
    def build() -> Network:
        net = load_model(name)
        assert isinstance(net, Network)
        return net

    return build


RADIUS_NETS = (
    RadiusNet(
        "mnist-fc-3layer",
        _builtin("mnist-fc-3layer"),
        "mnist100",
        100,
        "1,000 images < 0.3 s",
        lambda s, n: n >= 1000 and s < 0.3,
    ),
    RadiusNet("784-1024-1024-10 (random)", lambda: random_mlp((1024,) * 2), "mnist100", 50),
    RadiusNet(
        "784-[1024]x6-10 (random)",
        lambda: random_mlp((1024,) * 6),
        "mnist100",
        8,
        "< 5 ms/image",
        lambda s, n: s / n < 5e-3,
    ),
    RadiusNet("cifar-2c2f", _builtin("cifar-2c2f"), "cifar100", 10),
)


@dataclass(frozen=True)
class Fraction:
    """A row's dense FLOPs and seconds; its fraction of the peak is rendered at the end."""

    flops: float
    seconds: float

    def text(self, peak: float) -> str:
        ok = self.seconds > 0 and self.flops > 0
        return f"{self.flops / self.seconds / peak:.3f}" if ok else "-"


class Bench:
    """Holds the run's settings and its rows; one method per workload."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = resolve_device(args.device)
        self.name = device_name(self.device)
        self.on_h200 = "H200" in self.name
        self.peak = matmul_rate(self.device)
        self.rows: list[list[object]] = []

    def fraction(self, flops: float, seconds: float) -> Fraction:
        """Filled in by :meth:`table`, over the peak measured before and after the work."""
        return Fraction(flops, seconds)

    def table(self) -> str:
        self.peak = max(self.peak, matmul_rate(self.device))
        rows = [[c.text(self.peak) if isinstance(c, Fraction) else c for c in r] for r in self.rows]
        return render_table(HEADERS, rows)

    def met(self, check: Callable[[float, int], bool] | None, seconds: float, n: int) -> str:
        if check is None or not self.on_h200 or self.args.quick:
            return "-"
        return "yes" if check(seconds, n) else "NO"

    def add(self, *cells: object) -> None:
        workload, model, *rest = cells
        self.rows.append([workload, model, self.name, "float32", *rest])
        row = (c.text(self.peak) if isinstance(c, Fraction) else str(c) for c in self.rows[-1])
        print("row:", " | ".join(row), flush=True)

    # -- certified radius ------------------------------------------------------------------
    def radius(self) -> None:
        for spec in RADIUS_NETS:
            self._radius_row(spec)

    def _radius_row(self, spec: RadiusNet) -> None:
        a = self.args
        net = spec.build().to(device=self.device)
        assert net.input_range is not None
        n = a.images or (spec.quick_count if a.quick else 1000)
        x = net.check_input(noisy_images(spec.dataset, n, net.input_range, 0.01, a.seed))
        x = x.to(self.device)
        labels = predictions(net, x)
        targets = torch.full_like(labels, -1)

        def run(k: int, steps: int) -> list[float]:
            out: list[float] = []
            for lo, hi in growing_spans(k, a.batch_size):  # the CLI's batching
                with torch.no_grad():
                    r = certified_radius(
                        net,
                        x[lo:hi],
                        labels[lo:hi],
                        targets[lo:hi],
                        norm=a.norm,
                        method=a.method,
                        steps=steps,
                    )
                out += r.tolist()
            return out

        run(2, 2)  # warm-up: kernels, lazy imports
        radii, dt = timed(self.device, lambda: run(n, a.steps))
        # FLOPs from a second run on a few images: the counter slows the timed run.
        k = min(a.flop_images, n)
        flops = count_flops(lambda: run(k, a.steps)) / k * n
        self.add(
            "radius",
            spec.label,
            f"{n} images",
            f"{a.method} L{a.norm}, {a.steps} steps, batch {a.batch_size}",
            f"{dt:.3f}",
            f"{dt / n * 1e3:.2f} ms/image",
            f"mean radius {statistics.fmean(radii):.4g}",  # type: ignore[arg-type]
            spec.target,
            self.met(spec.check, dt, n),
            self.fraction(flops, dt),
        )

    # -- CLEVER on resnet50 ----------------------------------------------------------------
    def clever(self) -> None:
        a = self.args
        size = a.clever_size or (64 if a.quick else 224)
        batches = a.clever_batches or (16 if a.quick else 500)
        nsamp = a.clever_nsamp or (32 if a.quick else 1024)
        chunk = a.clever_batch_size or (256 if self.device.type == "cuda" else 64)
        model = build_model("resnet50", image_size=size, seed=0, device=self.device)
        x0 = resized_cifar(1, size)[0].to(self.device)

        def run(nb: int, ns: int) -> object:
            est = Clever(ns, nb, seed=a.seed, batch_size=min(chunk, ns))
            return est(model, x0, targets=a.clever_targets)

        run(2, min(nsamp, chunk))  # warm-up at the timed run's pass size
        res, dt = timed(self.device, lambda: run(batches, nsamp))
        per_target = len(res.per_target)  # type: ignore[attr-defined]
        flops = _grad_flops(model, x0) * nsamp * batches * per_target
        full = size == 224 and batches >= 500 and nsamp >= 1024
        self.add(
            "CLEVER",
            f"resnet50 @{size}x{size} (random weights)" + ("" if full else " [scaled down]"),
            "1 image",
            f"{a.clever_targets}, {batches} batches x {nsamp} samples, pass {min(chunk, nsamp)}",
            f"{dt:.2f}",
            f"{dt:.2f} s/image",
            f"L2 score {res.scores['2']:.4g}",  # type: ignore[attr-defined]
            "1024 x 500 < 10 s/image",
            self.met((lambda s, n: s < 10.0) if full else None, dt, 1),
            self.fraction(flops, dt),
        )

    # -- PGD -------------------------------------------------------------------------------
    def pgd(self) -> None:
        a = self.args
        steps = a.pgd_steps or (10 if a.quick else 50)
        mlp = load_model("mnist-fc-3layer")
        assert isinstance(mlp, Network) and mlp.input_range is not None
        mlp = mlp.to(device=self.device)
        n_mlp = a.images or (100 if a.quick else 1000)
        x = mlp.check_input(noisy_images("mnist100", n_mlp, mlp.input_range, 0.01, a.seed))
        self._pgd_row("mnist-fc-3layer", mlp, x.to(self.device), 0.1, steps, None)
        size = 224
        r50 = build_model("resnet50", image_size=size, seed=0, device=self.device)
        n_r50 = a.pgd_images or (2 if a.quick else 16)
        x = resized_cifar(n_r50, size).to(self.device)
        self._pgd_row("resnet50 @224x224 (random weights)", r50, x, 2 / 255, steps, (0.0, 1.0))

    def _pgd_row(
        self,
        label: str,
        model: Network | torch.nn.Module,
        x: torch.Tensor,
        eps: float,
        steps: int,
        domain: tuple[float, float] | None,
    ) -> None:
        labels = predictions(model, x)
        kw: dict = {"domain": domain} if domain is not None else {}
        attack = PGD(norm="inf", steps=steps, seed=self.args.seed, **kw)
        PGD(norm="inf", steps=1, seed=0, **kw)(model, x[:1], labels[:1], eps=eps)  # warm-up
        res, dt = timed(self.device, lambda: attack(model, x, labels, eps=eps))
        n = x.shape[0]
        found = int(res.success.sum())  # type: ignore[attr-defined]
        flops = _grad_flops(model, x[0]) * (steps + 1) * n
        self.add(
            "PGD",
            label,
            f"{n} images",
            f"Linf eps {eps:.4g}, {steps} steps, 1 restart",
            f"{dt:.3f}",
            f"{dt / n * 1e3:.2f} ms/image",
            f"adversarial {found}/{n}",
            "-",
            "-",
            self.fraction(flops, dt),
        )

    # -- verification ----------------------------------------------------------------------
    def verify(self) -> None:
        a = self.args
        folder = next((d for d in VNNCOMP_DIRS if (d / "instances.csv").exists()), None)
        if folder is None:
            print("verify: no shared VNN-COMP instances found; no verify rows", flush=True)
            return
        per = a.verify_instances or (2 if a.quick else 10)
        cap = a.verify_cap or (10.0 if a.quick else 20.0)
        instances = vnncomp_instances(folder, ["mnist_fc", "acasxu"], per)
        first = instances[0]
        verify_files(first["onnx"], first["vnnlib"], timeout=min(cap, 5.0), device=self.device)
        for family in dict.fromkeys(i["family"] for i in instances):
            records = []
            for inst in (i for i in instances if i["family"] == family):
                limit = min(cap, inst["timeout"])
                try:
                    res, dt = timed(
                        self.device,
                        lambda inst=inst, limit=limit: verify_files(
                            inst["onnx"], inst["vnnlib"], timeout=limit, device=self.device
                        ),
                    )
                    status = res.status  # type: ignore[attr-defined]
                except NnboundError:
                    status, dt = "error", math.nan
                records.append((status, dt, verdict(status, inst["expected"])))
            solved = [t for s, t, _ in records if s in ("sat", "unsat")]
            wrong = sum(v == "WRONG" for _, _, v in records)
            median = f"median {statistics.median(solved):.3f} s" if solved else "-"
            self.add(
                "verify",
                f"vnncomp {family}",
                f"{len(records)} instances",
                f"cap {cap:g} s",
                f"{sum(t for _, t, _ in records if not math.isnan(t)):.2f}",
                median,
                f"solved {len(solved)}/{len(records)}, wrong {wrong}",
                "-",
                "-",
                "-",
            )


def _grad_flops(model: Network | torch.nn.Module, x0: torch.Tensor, rows: int = 2) -> float:
    """FLOPs of one forward + input-gradient pass per sample (CLEVER's and PGD's unit of
    work), counted on ``rows`` copies of ``x0``."""
    x = x0.unsqueeze(0).expand(rows, *x0.shape).clone().requires_grad_(True)

    def step() -> None:
        # backward(), not autograd.grad: the counter's module hooks refuse the latter.
        with torch.enable_grad():
            model(x)[:, 0].sum().backward()

    return count_flops(step) / rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto: CUDA if any)")
    ap.add_argument("--quick", action="store_true", help="CPU-sized counts (labelled in rows)")
    ap.add_argument("--only", default="radius,clever,pgd,verify", help="comma list of workloads")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("radius")
    g.add_argument("--images", type=int, default=0, help="images per net (0: 1000 / quick)")
    g.add_argument("--method", default="crown-adaptive")
    g.add_argument("--norm", default="inf")
    g.add_argument("--steps", type=int, default=15)
    g.add_argument("--batch-size", type=int, default=100, help="the CLI's --batch-size")
    g.add_argument("--flop-images", type=int, default=4, help="images the FLOPs are counted on")
    g = ap.add_argument_group("CLEVER")
    g.add_argument("--clever-batches", type=int, default=0, help="batches (0: 500 / quick 16)")
    g.add_argument("--clever-nsamp", type=int, default=0, help="samples/batch (0: 1024 / quick 32)")
    g.add_argument("--clever-batch-size", type=int, default=0, help="rows per pass (0: auto)")
    g.add_argument("--clever-size", type=int, default=0, help="image side (0: 224 / quick 64)")
    g.add_argument("--clever-targets", default="top2", help="top2 | least | random | untargeted")
    g = ap.add_argument_group("PGD and verify")
    g.add_argument("--pgd-steps", type=int, default=0, help="0: 50 / quick 10")
    g.add_argument("--pgd-images", type=int, default=0, help="resnet50 images (0: 16 / quick 2)")
    g.add_argument("--verify-instances", type=int, default=0, help="per family (0: 10 / quick 2)")
    g.add_argument("--verify-cap", type=float, default=0, help="s per instance (0: 20 / quick 10)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    bench = Bench(args)
    precision = ""
    if bench.device.type == "cuda":
        precision = (
            f", matmul TF32 {torch.backends.cuda.matmul.allow_tf32}, "
            f"cuDNN TF32 {torch.backends.cudnn.allow_tf32}"
        )
    print(
        f"device {bench.name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"measured float32 matmul rate {bench.peak / 1e9:.1f} GFLOP/s{precision}"
        + (" [--quick]" if args.quick else ""),
        flush=True,
    )
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - {"radius", "clever", "pgd", "verify"}
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    for workload in ("radius", "clever", "pgd", "verify"):
        if workload in only:
            getattr(bench, workload)()
    table = bench.table()
    print(f"\nfloat32 matmul rate (best before / after the work): {bench.peak / 1e9:.1f} GFLOP/s")
    print(table)


if __name__ == "__main__":
    main()
