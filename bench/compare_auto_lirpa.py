"""CROWN on general graphs, nnbound beside auto_LiRPA: the same torch modules, inputs, Linf
balls and margin specs; bounds compared entry by entry, and the time of each.

auto_LiRPA is never a dependency: run this with an interpreter where both import, e.g. a
scratch venv holding torch 2.13, auto_LiRPA's source installed with its torch/torchvision pins
relaxed (``pip install -e <checkout>`` after editing ``setup.py``) and nnbound
(``pip install -e .``). Without auto_LiRPA the script says so and exits.

Nets (random weights, seeded; eval mode; batch norm with calibrated statistics):
residual MLP (ReLU and tanh), branch-and-concatenate MLP, and the catalogue's CIFAR ResNet
with one and two basic blocks per stage at 16x16 and 32x32 pixels (width 8 / 16).

For each: ``lower`` / ``upper`` of nnbound's ``crown`` (``crown-general`` for tanh; default:
intermediate bounds intersected with IBP, only unstable ReLUs back-propagated) and auto_LiRPA's
``compute_bounds(method="CROWN")``; the largest entry-wise difference, the mean width ratio
(nnbound / auto_LiRPA; < 1 is tighter), and whether one bound contains the other.

Usage: python bench/compare_auto_lirpa.py [--eps 0.002] [--images 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nnbound.bounds.api import bounds
from nnbound.catalogue.cifar import cifar_resnet
from nnbound.network.from_torch_graph import from_torch_graph
from nnbound.report.tables import render_table
from nnbound.sets.lp_ball import LpBall
from nnbound.tasks.radius import margin_specs


class ResidualMLP(nn.Module):
    def __init__(self, act: Callable[[Tensor], Tensor], d: int = 64, h: int = 128) -> None:
        super().__init__()
        self.act = act
        self.inp, self.body1, self.body2 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, h)
        self.out = nn.Linear(h, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.inp(x.flatten(1)))
        h = self.act(h + self.body2(self.act(self.body1(h))))
        return self.out(h)


class BranchConcat(nn.Module):
    def __init__(self, d: int = 64, h: int = 64) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, h), nn.Linear(d, h)
        self.mix, self.out = nn.Linear(2 * h, h), nn.Linear(h, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.out(torch.relu(self.mix(y)))


@dataclass
class Case:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...]


def cases() -> list[Case]:
    torch.manual_seed(0)
    flat = (1, 8, 8)
    return [
        Case("residual MLP relu", ResidualMLP(torch.relu).eval(), flat),
        Case("residual MLP tanh", ResidualMLP(torch.tanh).eval(), flat),
        Case("branch + concat", BranchConcat().eval(), flat),
        Case(
            "cifar resnet (1,1) w8 16px", cifar_resnet((1, 1), width=8, image_size=16), (3, 16, 16)
        ),
        Case(
            "cifar resnet (2,2) w8 32px", cifar_resnet((2, 2), width=8, image_size=32), (3, 32, 32)
        ),
        Case(
            "cifar resnet (1,1,1) w16 32px",
            cifar_resnet((1, 1, 1), width=16, image_size=32),
            (3, 32, 32),
        ),
    ]


def nnbound_crown(case: Case, x: Tensor, eps: float, spec: Tensor) -> tuple[Tensor, Tensor, float]:
    graph = from_torch_graph(case.module, case.input_shape, name=case.name, input_range=(0.0, 1.0))
    ball = LpBall.make(x, eps, "inf")
    t = time.perf_counter()
    method = "crown-general" if "tanh" in case.name else "crown"  # CROWN's lines for tanh
    b = bounds(graph, ball, method, C=spec)
    return b.lower, b.upper, time.perf_counter() - t


def lirpa_crown(case: Case, x: Tensor, eps: float, spec: Tensor) -> tuple[Tensor, Tensor, float]:
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    model = BoundedModule(case.module, torch.zeros_like(x), device="cpu", verbose=False)
    bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=eps))
    t = time.perf_counter()
    lo, up = model.compute_bounds(x=(bx,), C=spec, method="CROWN")
    return lo.detach(), up.detach(), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", type=float, default=0.002)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        print("auto_LiRPA is not importable here: nothing to compare (see the docstring)")
        return
    torch.set_num_threads(args.threads)
    rows = []
    for case in cases():
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(args.images, *case.input_shape, generator=gen)
        with torch.no_grad():
            labels = case.module(x).argmax(1)
        targets = torch.full_like(labels, -1)
        spec = margin_specs(labels, targets, 10, x.dtype)
        n_lo, n_up, n_t = nnbound_crown(case, x, args.eps, spec)
        a_lo, a_up, a_t = lirpa_crown(case, x, args.eps, spec)
        diff = float(torch.maximum((n_lo - a_lo).abs(), (n_up - a_up).abs()).max())
        ratio = float((n_up - n_lo).mean() / (a_up - a_lo).mean())
        inside = bool((n_lo >= a_lo - 1e-5).all() and (n_up <= a_up + 1e-5).all())
        rows.append([case.name, diff, ratio, "yes" if inside else "no", n_t, a_t, a_t / n_t])
        print("row", rows[-1], flush=True)
    headers = ["net", "max |diff|", "width ratio", "nnbound inside", "nnbound s", "auto_LiRPA s"]
    print(render_table([*headers, "speed-up"], rows, digits=4))


if __name__ == "__main__":
    main()
