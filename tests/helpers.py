"""Shared test helpers: seeded random networks and a batched PGD attack inside an LpBall.

Test files import this module as ``helpers`` (they put ``tests/`` on ``sys.path`` first).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from nnbound.bounds.spectral import block_matrix
from nnbound.network.layers import Activation, Dense, Flatten
from nnbound.network.network import Network
from nnbound.sets.lp_ball import LpBall

# The tests run many tiny tensor ops; on a small, shared machine torch's intra-op thread pool
# makes them 10-50x slower (threads spin while other processes hold the cores).
torch.set_num_threads(1)

ALL_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "arctan", "softplus", "elu", "brelu")
PIECEWISE_LINEAR = ("relu", "leaky_relu", "brelu")
NORMS = (1.0, 2.0, math.inf)


def methods_for(activation: str) -> tuple[str, ...]:
    """Every layer-wise method defined for a network of ``activation``."""
    if activation in PIECEWISE_LINEAR:
        return (
            "ibp",
            "fastlin",
            "fastlin-interval",
            "crown-adaptive",
            "crown-interval",
            "crown-general",
        )
    return ("ibp", "crown-general")


def random_network(
    activation: str,
    sizes: Sequence[int],
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    alpha: float | None = None,
    weight_scale: float = 1.0,
    bias_scale: float = 0.5,
) -> Network:
    """A dense network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` after
    every hidden layer.

    Weights are ``N(0, weight_scale^2 / fan_in)``, biases ``N(0, bias_scale^2)``, all drawn
    from a generator seeded with ``seed`` (reproducible). ``alpha`` is the leaky slope /
    ELU scale / bounded-ReLU cap (default 0.3 for leaky ReLU, 1.0 for ELU and bounded ReLU).
    """
    if len(sizes) < 2:
        raise ValueError("sizes needs at least an input and an output size")
    if alpha is None:
        alpha = {"leaky_relu": 0.3, "elu": 1.0, "brelu": 1.0}.get(activation, 0.0)
    gen = torch.Generator().manual_seed(int(seed))
    layers: list = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64)
        w = w * (weight_scale / math.sqrt(fan_in))
        b = torch.randn(fan_out, generator=gen, dtype=torch.float64) * bias_scale
        layers.append(Dense(w.to(dtype), b.to(dtype)))
        if i < len(sizes) - 2:
            layers.append(Activation(activation, alpha))
    return Network(layers=tuple(layers), input_shape=(int(sizes[0]),), name=f"random-{activation}")


def spec_outputs(net: Network, x: Tensor, C: Tensor | None) -> Tensor:
    """``C f(x)`` for ``x`` of shape ``(N, M, *input_shape)`` -> ``(N, M, S)``.

    ``C`` is ``None`` (identity), ``(S, out)`` or ``(N, S, out)``.
    """
    n, m = x.shape[:2]
    y = net(x.reshape(n * m, *x.shape[2:])).reshape(n, m, -1)
    if C is None:
        return y
    if C.dim() == 2:
        return y @ C.T.to(y.dtype)
    return torch.einsum("nmo,nso->nms", y, C.to(y.dtype))


def _expand_spec(C: Tensor | None, rows: int, net: Network) -> Tensor:
    out = net.num_outputs
    if C is None:
        C = torch.eye(out, dtype=net.dtype)
    C = C.to(net.dtype)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(rows, -1, -1)
    if C.shape[0] != rows:
        if rows % C.shape[0]:
            raise ValueError(f"spec with {C.shape[0]} rows does not fit {rows} ball rows")
        C = C.repeat_interleave(rows // C.shape[0], dim=0)
    return C


def _ascent_step(grad: Tensor, p: float, step: Tensor, topk: int) -> Tensor:
    """A steepest-ascent step of length ``step`` in the p-norm (grad ``(N, M, d)``)."""
    if p == math.inf:
        return step * grad.sign()
    if p == 2.0:
        return step * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    # L1: move only along the k coordinates with the largest |gradient| (sparse step).
    k = min(topk, grad.shape[-1])
    vals, idx = grad.abs().topk(k, dim=-1)
    direction = torch.zeros_like(grad)
    direction.scatter_(-1, idx, vals / vals.sum(-1, keepdim=True).clamp_min(1e-30))
    return step * direction * grad.sign()


def pgd_extremes(
    net: Network,
    ball: LpBall,
    C: Tensor | None = None,
    *,
    steps: int = 60,
    restarts: int = 4,
    pool: int = 256,
    seed: int = 0,
    return_points: bool = False,
):
    """Approximate min and max of every spec row ``(C f(x))_s`` over every ball row.

    All (row, spec, side, restart) problems are solved at once: each one owns a copy of the
    input, so summing the objectives and back-propagating once gives every gradient. The first
    restart starts at the centre, the others at the best points of a pool of ``pool``
    uniform samples and vertices. Steps shrink from
    ``2 eps / steps``-ish to ~0 (a cosine schedule); the best point ever visited counts.

    Returns ``(mins, maxs)``, each ``(N, S)`` with ``N`` = ball rows (and the arg points
    ``(N, S, *shape)`` each when ``return_points``).
    """
    rows = ball.center.shape[0]
    spec = _expand_spec(C, rows, net)  # (N, S, out)
    s = spec.shape[1]
    shape = tuple(ball.center.shape[1:])
    d = math.prod(shape)
    gen = torch.Generator().manual_seed(int(seed))
    r = max(1, restarts)
    # Starts: the centre, then for each (side, spec) the best points of a random pool of
    # uniform samples and vertices (cheap, and much better than random starts alone).
    starts = [ball.center.reshape(rows, 1, 1, d).expand(rows, 2 * s, 1, d)]
    if r > 1:
        half = max(r, pool // 2)
        cand = torch.cat([ball.sample(half, generator=gen), ball.vertices(half, generator=gen)], 1)
        cand = cand.reshape(rows, 2 * half, d)
        with torch.no_grad():
            vals = spec_outputs(net, cand.reshape(rows, 2 * half, *shape), spec)  # (N, P, S)
        lo_idx = (-vals).topk(r - 1, dim=1).indices  # (N, r-1, S)
        hi_idx = vals.topk(r - 1, dim=1).indices
        idx = torch.cat([lo_idx, hi_idx], 2).transpose(1, 2)  # (N, 2S, r-1)
        picked = cand.gather(1, idx.reshape(rows, -1, 1).expand(-1, -1, d))
        starts.append(picked.reshape(rows, 2 * s, r - 1, d))
    x = torch.cat(starts, dim=2).reshape(rows, -1, d).detach().clone()
    m = x.shape[1]  # 2 * S * R, ordered (side, spec, restart)
    sign = torch.cat([-torch.ones(s * r), torch.ones(s * r)]).to(net.dtype)  # -1: minimise
    spec_idx = torch.arange(s).repeat_interleave(r).repeat(2)  # (m,)
    rows_c = spec[:, spec_idx, :]  # (N, m, out): the spec row each copy works on
    eps = ball.eps.view(-1, 1, 1)
    base = {math.inf: 2.5, 2.0: 2.0, 1.0: 2.0}[ball.p]
    topk = max(1, d // 4)

    def objective(xx: Tensor) -> Tensor:
        y = net(xx.reshape(rows * m, *shape)).reshape(rows, m, -1)
        return (y * rows_c).sum(-1)  # (N, m)

    with torch.no_grad():
        vals = objective(x)
    best = vals.clone()  # true values of the spec row at the best point (per copy)
    best_x = x.clone()
    for t in range(steps):
        x.requires_grad_(True)
        val = objective(x)
        (grad,) = torch.autograd.grad((val * sign).sum(), x)
        with torch.no_grad():
            lr = base * eps / steps * (0.5 * (1 + math.cos(math.pi * t / steps)) + 0.05)
            x = ball.project((x + _ascent_step(grad, ball.p, lr, topk)).reshape(rows, m, *shape))
            x = x.reshape(rows, m, d)
            val = objective(x)
            better = (val - best) * sign > 0
            best = torch.where(better, val, best)
            best_x = torch.where(better.unsqueeze(-1), x, best_x)
    best = best.reshape(rows, 2, s, r)
    mins, arg_min = best[:, 0].min(-1)
    maxs, arg_max = best[:, 1].max(-1)
    if not return_points:
        return mins.detach(), maxs.detach()
    bx = best_x.reshape(rows, 2, s, r, d)
    gather = torch.arange(s)
    pmin = bx[:, 0][torch.arange(rows)[:, None], gather[None, :], arg_min]
    pmax = bx[:, 1][torch.arange(rows)[:, None], gather[None, :], arg_max]
    return (
        mins.detach(),
        maxs.detach(),
        pmin.reshape(rows, s, *shape).detach(),
        pmax.reshape(rows, s, *shape).detach(),
    )


def pgd_violation(
    net: Network,
    ball: LpBall,
    C: Tensor | None,
    lower: Tensor,
    upper: Tensor,
    **kw,
) -> tuple[Tensor, Tensor]:
    """Largest ``lower - C f(x)`` and ``C f(x) - upper`` PGD finds (each ``(N, S)``; ``<= 0``
    means no violation found). ``lower``/``upper`` may be shaped ``(*batch_shape, S)``."""
    mins, maxs = pgd_extremes(net, ball, C, **kw)
    lo = lower.reshape(mins.shape)
    up = upper.reshape(maxs.shape)
    return lo - mins, maxs - up


def check_points_within(
    net: Network,
    points: Tensor,
    C: Tensor | None,
    lower: Tensor,
    upper: Tensor,
) -> tuple[float, float]:
    """Largest violation of ``lower <= C f(x) <= upper`` over ``points`` ``(N, M, *shape)``
    (bounds ``(N, S)`` after reshaping). Returns ``(below, above)``; ``<= 0`` means sound."""
    n = points.shape[0]
    with torch.no_grad():
        out = spec_outputs(net, points, _expand_spec(C, n, net) if C is not None else None)
    lo = lower.reshape(n, 1, -1)
    up = upper.reshape(n, 1, -1)
    return float((lo - out).max()), float((out - up).max())


def unrolled(net: Network) -> Network:
    """The same function with each linear block (conv, avg pool, normalize, flatten) as one
    Dense layer (for CNN-equals-unrolled-MLP checks)."""
    layers, shapes = net.layers, net.shapes
    acts = [i for i, layer in enumerate(layers) if isinstance(layer, Activation)]
    out: list = [Flatten()]
    start = 0
    for end in [*acts, len(layers)]:
        w = block_matrix(layers, shapes, start, end)
        zero = torch.zeros(1, *shapes[start], dtype=w.dtype)
        for layer in layers[start:end]:
            zero = layer.forward(zero)
        out.append(Dense(w, zero.reshape(-1)))
        if end < len(layers):
            out.append(layers[end])
        start = end + 1
    return Network(tuple(out), net.input_shape)


class TorchCalls(TorchFunctionMode):
    """Counts the torch calls made inside it (``total``) and, among them, the ones that read a
    tensor's value on the host (``host_reads``): on a GPU each of those waits for the device
    to finish (a synchronisation), and each call is a kernel launch or more. A CPU run makes the
    same calls, so CPU tests can check that a loop's count does not grow with the batch."""

    HOST_READS = frozenset(
        {
            "item",
            "__bool__",
            "__int__",
            "__float__",
            "__index__",
            "tolist",
            "numpy",
            "cpu",
            "nonzero",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.host_reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.total += 1
        if getattr(func, "__name__", "") in self.HOST_READS:
            self.host_reads += 1
        return func(*args, **(kwargs or {}))
