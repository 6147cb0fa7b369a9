"""Local Lipschitz bounds of a margin: nnbound's ``crown-jacobian`` beside auto_LiRPA's
Jacobian bounds (Shi, Wang, Zhang, Kolter, Hsieh, NeurIPS 2022) on the same torch modules,
MNIST test images, Linf balls (clipped to [0, 1] for both) and margin specs (label -
runner-up logit).

The bound is on ``||grad_x (c . f)||_1`` over the ball, the Lipschitz constant of the margin
for Linf perturbations. Columns: nnbound ``crown-jacobian``, the same
alpha-optimised (``--alpha-steps``, 0 skips it; :mod:`nnbound.jacobian.alpha_jacobian`) and
``recurjac`` (CROWN-general
layer bounds), auto_LiRPA's ``compute_jacobian_bounds`` of ``GradNorm(norm=1)(JacobianOP(c .
f(x), x))`` without optimisation (``optimize=False``: CROWN intermediate bounds) and with its
default (``optimize=True``: alpha-CROWN on the forward network first), the largest sampled
gradient norm in the ball (uniform samples, vertices, projected ascent: ``sampled_max``),
the ratio nnbound / auto_LiRPA, and seconds per image. Every bound below the sampled
maximum is reported as UNSOUND.

auto_LiRPA is never a dependency: run this with an interpreter where both import (see
``bench/compare_auto_lirpa.py``). Without auto_LiRPA the script says so and exits.

Nets: the built-in ``mnist-fc-3layer`` (trained ReLU, 784-128-64-10) and ``mnist-cnn-small``
(trained ReLU CNN, 2 conv + 256 dense; ``cnn``), a random 784-1024-1024-10
ReLU MLP (He init, seed 0, zero biases) and a random 784-512-512-10 tanh MLP (LeCun init,
seed 0, biases N(0, 0.1^2)).

Usage: python bench/compare_auto_lirpa_jacobian.py [--images 2] [--eps 0.001,0.002,0.005,0.01]
    [--threads 2] [--nets fc3,relu1024,tanh512,cnn] [--no-optimize] [--alpha-steps 20]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from bench_jacobian_propagation import sampled_max
from torch import Tensor, nn

from nnbound.data.registry import load_dataset
from nnbound.jacobian.alpha_jacobian import JacobianAlpha
from nnbound.jacobian.lipschitz import local_lipschitz
from nnbound.network.from_torch import from_torch
from nnbound.network.load import load_model
from nnbound.network.network import Network
from nnbound.network.to_torch import to_torch
from nnbound.report.tables import render_table
from nnbound.sets.lp_ball import LpBall

DOMAIN = (0.0, 1.0)


@dataclass
class Case:
    name: str
    module: nn.Module
    net: Network


def mlp(widths: list[int], act: type[nn.Module], seed: int) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            if act is nn.ReLU:  # He
                lin.weight.copy_(
                    torch.randn(lin.weight.shape, generator=gen) * math.sqrt(2 / widths[i])
                )
                lin.bias.zero_()
            else:  # LeCun
                lin.weight.copy_(
                    torch.randn(lin.weight.shape, generator=gen) * math.sqrt(1 / widths[i])
                )
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen) * 0.1)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def cases(which: list[str]) -> list[Case]:
    out = []
    shape = (1, 28, 28)
    for key, model in (("fc3", "mnist-fc-3layer"), ("cnn", "mnist-cnn-small")):
        if key in which:
            net = load_model(model)
            out.append(Case(model, to_torch(net).eval(), net))
    for key, name, module in (
        ("relu1024", "relu 784-1024-1024-10", lambda: mlp([784, 1024, 1024, 10], nn.ReLU, 0)),
        ("tanh512", "tanh 784-512-512-10", lambda: mlp([784, 512, 512, 10], nn.Tanh, 0)),
    ):
        if key in which:
            m = module()
            net = from_torch(m, shape, input_range=DOMAIN, name=name)
            assert isinstance(net, Network)
            out.append(Case(name, m, net))
    return out


def margin_spec(logits: Tensor, labels: Tensor) -> Tensor:
    """``(B, 1, classes)``: ``e_label - e_runner-up`` (runner-up: the largest other logit)."""
    rows = torch.arange(logits.shape[0])
    other = logits.clone()
    other[rows, labels] = -math.inf
    c = torch.zeros(logits.shape[0], 1, logits.shape[1], dtype=logits.dtype)
    c[rows, 0, labels] = 1.0
    c[rows, 0, other.argmax(1)] = -1.0
    return c


def timed(fn: Callable[..., Tensor], *args: object) -> tuple[Tensor, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out.detach(), time.perf_counter() - t0


class LipschitzWrapper(nn.Module):
    """``||grad_x (c . f)(x)||_1`` as auto_LiRPA's local-Lipschitz example builds it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from auto_LiRPA.jacobian import GradNorm

        self.model = model
        self.grad_norm = GradNorm(norm=1)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        from auto_LiRPA.jacobian import JacobianOP

        y = self.model(x).matmul(c)
        return self.grad_norm(JacobianOP.apply(y, x))


def lirpa_lipschitz(model, x: Tensor, c: Tensor, eps: float, optimize: bool) -> Tensor:
    """auto_LiRPA's upper bound of ``||grad (c . f)||_1`` over the clipped Linf ball; ``x``
    one image ``(1, *shape)``, ``c`` ``(classes, 1)``."""
    from auto_LiRPA import BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    lo, hi = (x - eps).clamp(*DOMAIN), (x + eps).clamp(*DOMAIN)
    ptb = PerturbationLpNorm(norm=math.inf, eps=eps, x_L=lo, x_U=hi)
    bx = BoundedTensor(x, ptb)
    up = model.compute_jacobian_bounds((bx, c), optimize=optimize, bound_lower=False)[1]
    return up.reshape(())


SUMMARY = [
    "net",
    "eps",
    "CJ/sampled",
    "RJ/sampled",
    "aL/sampled",
    "aL opt/sampled",
    "CJ/aL max",
    "CJ/best aL max",
    "CJ s",
    "RJ s",
    "aL s",
    "aL opt s",
    "CJa/sampled",
    "CJa/best aL max",
    "CJa s",
]


def summary(rows: list[list]) -> list[list]:
    """Per net and eps: the mean over images of each bound / sampled maximum, the largest
    ratio nnbound / auto_LiRPA, and the mean seconds per image."""
    out = []
    for key in dict.fromkeys((r[0], r[1]) for r in rows):
        group = [r for r in rows if (r[0], r[1]) == key]

        def mean(f: Callable[[list], float], g: list[list] = group) -> float:
            return sum(f(r) for r in g) / len(g)

        out.append(
            [
                *key,
                mean(lambda r: r[4] / r[3]),
                mean(lambda r: r[5] / r[3]),
                mean(lambda r: r[6] / r[3]),
                mean(lambda r: r[7] / r[3]),
                max(r[8] for r in group),
                max(r[9] for r in group),
                *(mean(lambda r, k=k: r[k]) for k in range(11, 15)),
                mean(lambda r: r[15] / r[3]),
                max(r[16] for r in group),
                mean(lambda r: r[17]),
            ]
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--eps", default="0.001,0.002,0.005,0.01")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="fc3,relu1024,tanh512")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--no-optimize", action="store_true", help="skip auto_LiRPA's optimize=True")
    ap.add_argument(
        "--alpha-steps", type=int, default=20, help="crown-jacobian alpha steps (0: skip)"
    )
    args = ap.parse_args()
    try:
        from auto_LiRPA import BoundedModule, BoundedTensor
    except ImportError:
        print("auto_LiRPA is not importable here: nothing to compare (see the docstring)")
        return
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist100", input_range=DOMAIN)
    x_all = data.images[: args.images].float()
    labels = data.labels[: args.images]
    eps_list = [float(e) for e in args.eps.split(",")]
    rows, unsound = [], []
    for case in cases(args.nets.split(",")):
        with torch.no_grad():
            logits = case.module(x_all)
            assert torch.allclose(logits, case.net(x_all), atol=1e-4), case.name
        C = margin_spec(logits, labels)
        mask = C[0, 0].reshape(-1, 1).clone()
        lirpa = BoundedModule(
            LipschitzWrapper(case.module),
            (BoundedTensor(x_all[:1].clone()), mask),
            device="cpu",
            verbose=False,
            # its conv_transpose of a stride-2 conv has no patches mode
            bound_opts={"conv_mode": "matrix"},
        )
        for eps in eps_list:
            ball = LpBall.make(x_all, eps, math.inf, domain=DOMAIN)
            true = sampled_max(case.net, ball, C, args.samples, steps=10).float()
            cj, t_cj = timed(local_lipschitz, case.net, ball, C, "crown-jacobian")
            rj, t_rj = timed(local_lipschitz, case.net, ball, C, "recurjac")
            cj, rj = cj[:, 0], rj[:, 0]
            cja, t_cja = torch.full_like(cj, math.nan), 0.0
            if args.alpha_steps > 0:
                alpha = JacobianAlpha(args.alpha_steps)
                cja, t_cja = timed(
                    partial(local_lipschitz, alpha=alpha),
                    case.net,
                    ball,
                    C,
                    "crown-jacobian",
                )
                cja = cja[:, 0]
            res: dict[str, list[float]] = {"plain": [], "opt": []}
            sec = {"plain": 0.0, "opt": 0.0}
            for i in range(x_all.shape[0]):
                mask.copy_(C[i, 0].reshape(-1, 1))
                for key, opt in (("plain", False), ("opt", True)):
                    if opt and args.no_optimize:
                        res[key].append(math.nan)
                        continue
                    v, t = timed(lirpa_lipschitz, lirpa, x_all[i : i + 1], mask, eps, opt)
                    res[key].append(float(v))
                    sec[key] += t
            al, alo = torch.tensor(res["plain"]), torch.tensor(res["opt"])
            for name, val in (
                ("crown-jacobian", cj),
                ("crown-jacobian alpha", cja),
                ("recurjac", rj),
                ("auto_LiRPA", al),
            ):
                for i in torch.nonzero(val < true * (1 - 1e-4)).flatten().tolist():
                    unsound.append(f"{name} {case.name} eps {eps} image {i}: {val[i]} < {true[i]}")
            for i in range(x_all.shape[0]):
                if not math.isnan(res["opt"][i]) and res["opt"][i] < true[i] * (1 - 1e-4):
                    unsound.append(f"auto_LiRPA opt {case.name} eps {eps} image {i}")
            n = x_all.shape[0]
            for i in range(n):
                row = [
                    case.name,
                    f"{eps:g}",
                    str(i),
                    float(true[i]),
                    float(cj[i]),
                    float(rj[i]),
                    float(al[i]),
                    float(alo[i]),
                    float(cj[i] / al[i]),
                    float(cj[i] / torch.fmin(al[i], alo[i])),
                    float(cj[i] / true[i]),
                    t_cj / n,
                    t_rj / n,
                    sec["plain"] / n,
                    sec["opt"] / n,
                    float(cja[i]),
                    float(cja[i] / torch.fmin(al[i], alo[i])),
                    t_cja / n,
                ]
                rows.append(row)
                print("row", [f"{v:.4g}" if isinstance(v, float) else v for v in row], flush=True)
    headers = [
        "net",
        "eps",
        "img",
        "sampled max",
        "crown-jac",
        "recurjac",
        "aL plain",
        "aL opt",
        "CJ/aL",
        "CJ/best aL",
        "CJ/sampled",
        "CJ s",
        "RJ s",
        "aL s",
        "aL opt s",
        "CJ alpha",
        "CJa/best aL",
        "CJa s",
    ]
    print(render_table(headers, rows, digits=4))
    print()
    print(render_table(SUMMARY, summary(rows), digits=3))
    print("UNSOUND:\n" + "\n".join(unsound) if unsound else "all bounds >= the sampled maxima")


if __name__ == "__main__":
    main()
