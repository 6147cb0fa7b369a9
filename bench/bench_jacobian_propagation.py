"""Local Lipschitz bounds of a margin: Fast-Lip, RecurJac and crown-jacobian (bound propagation
through the gradient graph, Shi et al. NeurIPS 2022) side by side.

For each net, norm and eps: the mean over images of bound / (largest gradient dual norm found
in the ball: uniform samples, vertices and projected ascent on the norm), and the seconds per
image of each method (CROWN-general layer bounds for all three; Fast-Lip on ReLU nets only).
A ratio of 1.00 is exact; below 1 would be unsound.

Nets: ``mnist-fc-3layer`` (built in, trained, ReLU), a random 784-W-W-W-10 ReLU MLP, a
random 784-W'-W'-10 tanh MLP and a small random CNN (conv 8 4x4 /2, conv 16 4x4 /2, dense
10, ReLU), all on the first MNIST test images (built in), margin = label - runner-up. Random
weights are ``N(0, 1 / fan_in)``.

``crown-jac alpha``: the same with ``--alpha-steps`` steps of alpha-optimisation
(:mod:`nnbound.jacobian.alpha_jacobian`; 0 skips the column). auto_LiRPA is compared in
``bench/compare_auto_lirpa_jacobian.py`` (an interpreter where it imports).

Usage: python bench/bench_jacobian_propagation.py [--images 2] [--width 1024]
    [--tanh-width 512] [--norms i,2,1] [--device cpu] [--alpha-steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from nnbound.data.registry import load_dataset
from nnbound.jacobian import lipschitz_bounds
from nnbound.jacobian.alpha_jacobian import NO_ALPHA, JacobianAlpha
from nnbound.network.layers import Activation, Conv2d, Dense, Flatten
from nnbound.network.load import load_model
from nnbound.network.network import Network
from nnbound.report.tables import render_table
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm, parse_norm

EPS = {
    math.inf: (0.001, 0.002, 0.005, 0.01),
    2.0: (0.02, 0.1, 0.5),
    1.0: (0.2, 1.0, 5.0),
}


def random_mlp(widths: list[int], act: str, seed: int) -> Network:
    gen = torch.Generator().manual_seed(seed)
    layers: list = [Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        w = torch.randn(b, a, generator=gen) / math.sqrt(a)
        layers.append(Dense(w, torch.randn(b, generator=gen) * 0.1))
        if i < len(widths) - 2:
            layers.append(Activation(act))
    return Network(tuple(layers), (1, 28, 28), input_range=(0.0, 1.0), name=f"random-{act}")


def random_cnn(seed: int) -> Network:
    gen = torch.Generator().manual_seed(seed)

    def conv(o: int, i: int) -> Conv2d:
        w = torch.randn(o, i, 4, 4, generator=gen) / math.sqrt(16 * i)
        return Conv2d(w, torch.randn(o, generator=gen) * 0.1, stride=(2, 2), padding=(1, 1))

    w = torch.randn(10, 16 * 7 * 7, generator=gen) / math.sqrt(16 * 7 * 7)
    layers = (
        conv(8, 1),
        Activation("relu"),
        conv(16, 8),
        Activation("relu"),
        Flatten(),
        Dense(w, torch.zeros(10)),
    )
    return Network(layers, (1, 28, 28), input_range=(0.0, 1.0), name="random-cnn")


def margin_spec(net: Network, x: Tensor) -> Tensor:
    with torch.no_grad():
        logits = net(x)
    top2 = logits.topk(2, dim=1).indices
    c = torch.zeros(x.shape[0], 1, logits.shape[1], dtype=x.dtype, device=x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    c[rows, 0, top2[:, 0]] = 1.0
    c[rows, 0, top2[:, 1]] = -1.0
    return c


def sampled_max(net: Network, ball: LpBall, C: Tensor, samples: int, steps: int) -> Tensor:
    """The largest ``||grad (C f)||_q`` found in each ball (samples, vertices, ascent kept
    inside the ball's domain)."""
    q = dual_norm(ball.p)
    gen = torch.Generator().manual_seed(0)
    pts = torch.cat([ball.sample(samples, generator=gen), ball.vertices(samples, generator=gen)], 1)
    n, m = pts.shape[:2]
    flat = pts.reshape(n * m, *pts.shape[2:])
    c = C[:, 0].repeat_interleave(m, 0)
    eps = ball.eps.repeat_interleave(m, 0).view(-1, *([1] * (flat.dim() - 1)))
    centre = ball.center.repeat_interleave(m, 0)
    best = torch.zeros(n, dtype=torch.float64)

    def norms(z: Tensor, create: bool) -> Tensor:
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((net(z) * c).sum(), z, create_graph=create)
        return torch.linalg.vector_norm(g.reshape(g.shape[0], -1), q, dim=-1), z

    for t in range(steps + 1):
        value, z = norms(flat, create=t < steps)
        best = torch.maximum(best, value.detach().double().reshape(n, m).amax(1))
        if t == steps or not value.requires_grad:  # piecewise-linear nets: no curvature
            break
        (step,) = torch.autograd.grad(value.sum(), z)
        if ball.p == math.inf:
            move = step.sign()
        elif ball.p == 2.0:
            norm = step.reshape(step.shape[0], -1).norm(dim=1).clamp_min(1e-30)
            move = step / norm.view(-1, *([1] * (step.dim() - 1)))
        else:
            flat_step = step.reshape(step.shape[0], -1)
            idx = flat_step.abs().argmax(1, keepdim=True)
            move = torch.zeros_like(flat_step).scatter_(1, idx, 1.0) * flat_step.sign()
            move = move.reshape(step.shape)
        moved = flat.detach() + eps * move * (0.5 / (1 + t))
        flat = LpBall(centre, ball.eps.repeat_interleave(m, 0), ball.p, ball.domain).project(moved)
    return best


def timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--width", type=int, default=1024, help="hidden width of the ReLU MLP")
    ap.add_argument("--tanh-width", type=int, default=512)
    ap.add_argument("--norms", default="i,2,1")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--alpha-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    alpha = JacobianAlpha(args.alpha_steps)
    device = torch.device(args.device)
    data = load_dataset("mnist100", input_range=(0.0, 1.0))
    x_all = data.images[: args.images].to(device)
    w, tw = args.width, args.tanh_width
    nets = [
        load_model("mnist-fc-3layer"),
        random_mlp([784, w, w, w, 10], "relu", 1),
        random_mlp([784, tw, tw, 10], "tanh", 2),
        random_cnn(3),
    ]
    rows = []
    for net in nets:
        net = net.to(device=device)
        x = net.check_input(x_all)
        C = margin_spec(net, x)
        relu = all(a.op.traits.piecewise_linear for a in net.activations)
        methods = ["fastlip"] if relu else []
        methods += ["recurjac", "crown-jacobian"] + (["alpha"] if alpha.enabled else [])
        for norm in args.norms.split(","):
            p = parse_norm(norm)
            for eps in EPS[p]:
                ball = LpBall.make(x, eps, p)
                true = sampled_max(net, ball, C, args.samples, steps=10)
                row = [net.name, f"L{norm}", f"{eps:g}", f"{float(true.mean()):.4g}"]
                values = {}
                for method in ("fastlip", "recurjac", "crown-jacobian", "alpha"):
                    if method not in methods:
                        row += ["-", "-"]
                        continue
                    res, sec = timed(
                        lambda n=net, b=ball, c=C, m=method: (
                            lipschitz_bounds(
                                n,
                                b,
                                c,
                                "crown-jacobian" if m == "alpha" else m,
                                alpha=alpha if m == "alpha" else NO_ALPHA,
                            )
                            .value[:, 0]
                            .double()
                        )
                    )
                    if bool((res < true * (1 - 1e-4)).any()):
                        raise SystemExit(f"UNSOUND: {method} {net.name} L{norm} eps {eps}")
                    values[method] = res
                    ratio = float((res / true).mean())
                    row += [f"{ratio:.3f}", f"{sec / x.shape[0]:.2f}"]
                rj_cj = float((values["recurjac"] / values["crown-jacobian"]).mean())
                rows.append([*row, f"{rj_cj:.2f}"])
                print(" | ".join(rows[-1]), flush=True)
    header = [
        "net",
        "norm",
        "eps",
        "sampled max",
        "fastlip ratio",
        "s/img",
        "recurjac ratio",
        "s/img",
        "crown-jac ratio",
        "s/img",
        "crown-jac alpha ratio",
        "s/img",
        "RJ / CJ",
    ]
    print()
    print(render_table(header, rows))


if __name__ == "__main__":
    main()
