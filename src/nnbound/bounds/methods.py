"""Named bound methods: a choice of relaxations plus how hidden layers are bounded.

| method            | hidden layers                | last layer          | ReLU lower line      |
|-------------------|------------------------------|---------------------|----------------------|
| ibp (interval)    | interval arithmetic          | interval arithmetic | -                    |
| fastlin           | backward linear pass         | backward linear     | parallel (Fast-Lin)  |
| fastlin-interval  | interval arithmetic          | backward linear     | parallel             |
| crown-adaptive    | backward linear pass         | backward linear     | adaptive 0/1         |
| crown-interval    | interval arithmetic          | backward linear     | adaptive 0/1         |
| crown-general     | backward linear pass         | backward linear     | adaptive (strict)    |

The layers before the first activation are bounded exactly over the input set for every
method (the reference's ``interval_bound`` on layer 0). ``crown`` is an alias of
``crown-adaptive``. Fast-Lin and CROWN-adaptive are defined for ReLU (and leaky ReLU) networks;
CROWN-general handles every activation.

``reference=False`` (the default) adds two things the reference does not do, both sound and
never looser: each hidden neuron's linear bound is intersected with its interval bound, and for
piecewise-linear activations only neurons the interval bound leaves unstable get a backward
pass (a stable ReLU's relaxation does not depend on its bounds). ``reference=True`` computes
every neuron and never intersects, exactly as the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.interval import box_concretize, interval_forward
from nnbound.bounds.linear import backward_linear_bounds, start_rows
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import Activation
from nnbound.network.network import Network
from nnbound.relax.base import LinearRelaxation, Relaxation
from nnbound.relax.registry import relaxation_for
from nnbound.relax.relu import LowerSlope
from nnbound.relax.s_shaped import TangentRule
from nnbound.sets.box import InputSet


@dataclass(frozen=True)
class Method:
    """How a named method bounds a network."""

    name: str
    hidden: str  # "linear" | "interval"
    final: str  # "linear" | "interval"
    relu_lower: LowerSlope
    relu_only: bool


METHODS: dict[str, Method] = {
    "ibp": Method("ibp", "interval", "interval", LowerSlope.ADAPTIVE, False),
    "fastlin": Method("fastlin", "linear", "linear", LowerSlope.PARALLEL, True),
    "fastlin-interval": Method("fastlin-interval", "interval", "linear", LowerSlope.PARALLEL, True),
    "crown-adaptive": Method("crown-adaptive", "linear", "linear", LowerSlope.ADAPTIVE, True),
    "crown-interval": Method("crown-interval", "interval", "linear", LowerSlope.ADAPTIVE, True),
    "crown-general": Method("crown-general", "linear", "linear", LowerSlope.ADAPTIVE_STRICT, False),
}
ALIASES = {"interval": "ibp", "crown": "crown-adaptive", "fast-lin": "fastlin"}
LAYERWISE_METHODS = tuple(METHODS) + tuple(ALIASES)
ALL_METHODS = (*LAYERWISE_METHODS, "spectral", "quad", "alpha-crown")

# Elements of one backward-pass coefficient tensor processed at once (bounds memory use).
_CHUNK_ELEMENTS = 1 << 26
# Rows bounded together in one backward pass (grouped by similar numbers of unstable neurons).
_ROWS_PER_GROUP = 8


def get_method(name: str) -> Method:
    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise InputError(f"unknown bound method {name!r}; choose from {', '.join(ALL_METHODS)}")
    return METHODS[key]


def _check_activations(net: Network, method: Method) -> None:
    if not method.relu_only:
        return
    for act in net.activations:
        if act.name not in ("relu", "leaky_relu"):
            raise UnsupportedError(
                f"method {method.name} is defined for ReLU / leaky-ReLU networks; this network "
                f"has {act.name}: use crown-general"
            )


def _first_block_bounds(net: Network, end: int, ball: InputSet) -> tuple[Tensor, Tensor]:
    """Exact bounds of the (purely linear) output of ``layers[:end]`` over the ball."""
    layers, shapes = net.layers, net.shapes
    mid = ball.center
    for layer in layers[:end]:
        mid = layer.forward(mid)
    lo_box, hi_box = ball.box()
    box_lo, box_hi = interval_forward(layers, 0, end, lo_box, hi_box, {})
    if ball.p == math.inf:
        # Centre/radius arithmetic is exact for one affine map of a box; with several linear
        # maps in a row it is still sound.
        return box_lo, box_hi
    size = math.prod(shapes[end])
    eye = torch.eye(size, dtype=mid.dtype, device=mid.device).reshape(1, size, *shapes[end])
    a = eye
    for i in range(end - 1, -1, -1):
        a = layers[i].transpose(a, shapes[i])
    row_norm = torch.linalg.vector_norm(a.reshape(size, -1), ball.q, dim=-1)
    dev = (ball.eps.unsqueeze(1) * row_norm.unsqueeze(0)).reshape(mid.shape)
    lower, upper = mid - dev, mid + dev
    if ball.domain is not None:
        lower, upper = lower.maximum(box_lo), upper.minimum(box_hi)
    return lower, upper


def _padded_indices(mask: Tensor) -> Tensor:
    """Per row, the flat indices where ``mask`` (``(N, M)``) is true, padded to the largest
    count by repeating the row's first index (0 for an empty row): ``(N, U)``.

    Padding repeats a real index so that scattering results back writes the same value twice,
    never a stale one over a fresh one.
    """
    counts = mask.sum(1)
    u = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :u]
    valid = torch.arange(u, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return torch.where(valid, order, order[:, :1])


def _tighten_by_backward_pass(
    net: Network,
    j: int,
    ball: InputSet,
    lines: dict[int, LinearRelaxation],
    candidates: Tensor,
    lower: Tensor,
    upper: Tensor,
    intersect: bool,
) -> tuple[Tensor, Tensor]:
    """Backward-pass bounds of the neurons ``candidates`` (``(N, M)`` bool mask over the flat
    input of activation ``j``), written into ``lower``/``upper`` (kept where tighter when
    ``intersect``).

    Rows are grouped by how many candidates they have (largest first) so that padding every
    row of a group to the group's largest count wastes little work.
    """
    layers, shapes = net.layers, net.shapes
    n = candidates.shape[0]
    flat_lo = lower.reshape(n, -1).clone()
    flat_up = upper.reshape(n, -1).clone()
    counts = candidates.sum(1)
    order = torch.argsort(counts, descending=True, stable=True)
    width = max(math.prod(s) for s in shapes[: j + 1])
    start = 0
    while start < n:
        largest = int(counts[order[start]])
        if largest == 0:
            break
        fit = max(1, _CHUNK_ELEMENTS // (largest * width))
        rows = order[start : start + min(fit, _ROWS_PER_GROUP)]
        start += rows.numel()
        idx = _padded_indices(candidates[rows])
        sub_ball = ball.rows(rows)
        sub_lines = {
            k: LinearRelaxation(
                *(t[rows] for t in (v.lower_slope, v.lower_bias, v.upper_slope, v.upper_bias))
            )
            for k, v in lines.items()
        }
        a, const, end = start_rows(layers, shapes, j, idx, ball.center.dtype, ball.center.device)
        c_lo, c_up = backward_linear_bounds(layers, shapes, end, a, const, sub_lines, sub_ball)
        # Padding repeats a row's first candidate, so every write is that neuron's own bound;
        # a row without candidates keeps its bounds (as it would if bounded alone).
        has_any = (counts[rows] > 0).unsqueeze(1)
        for flat, new, take in ((flat_lo, c_lo, torch.maximum), (flat_up, c_up, torch.minimum)):
            block = flat[rows]
            old = block.gather(1, idx)
            best = take(old, new) if intersect else new
            flat[rows] = block.scatter(1, idx, torch.where(has_any, best, old))
    return flat_lo.reshape(lower.shape), flat_up.reshape(upper.shape)


def layerwise_bounds(
    net: Network,
    ball: InputSet,
    method: str = "crown-adaptive",
    C: Tensor | None = None,
    *,
    reference: bool = False,
    tangent: TangentRule = TangentRule.EXACT,
    prior: dict[int, tuple[Tensor, Tensor]] | None = None,
) -> Bounds:
    """Bounds of ``C @ net(x)`` for every x in ``ball`` with a layer-wise method.

    Args:
        net: the network (its dtype/device are used; the ball must match them).
        ball: the input set, N rows (see :class:`LpBall`).
        method: one of :data:`LAYERWISE_METHODS`.
        C: spec ``(N or B, S, num_outputs)``, or ``(S, num_outputs)`` shared by all rows;
            ``None`` bounds the logits themselves.
        reference: reproduce the reference exactly (no interval intersection, every neuron
            bounded) instead of the tighter default.
        tangent: the S-shaped tangent rule (EXACT is sound; REFERENCE keeps the reference's
            lines only where provably valid).
        prior: pre-activation bounds already known to hold over this ball (for instance
            computed over a larger ball with the same centre), ``{layer index: (lower,
            upper)}`` shaped like ``Bounds.intermediate.pre``; they are intersected in and
            spare the backward passes of neurons they prove stable. Ignored with
            ``reference``.

    Returns:
        :class:`Bounds` with ``lower``/``upper`` of shape ``(*ball.batch_shape, S)``.
    """
    m = get_method(method)
    _check_activations(net, m)
    layers, shapes = net.layers, net.shapes
    if tuple(ball.center.shape[1:]) != net.input_shape:
        raise InputError(
            f"input set has shape {tuple(ball.center.shape[1:])}, network expects {net.input_shape}"
        )
    if ball.center.dtype != net.dtype:
        raise InputError(f"input dtype {ball.center.dtype} differs from the network's {net.dtype}")
    n = ball.center.shape[0]
    acts = [i for i, layer in enumerate(layers) if isinstance(layer, Activation)]
    relax: dict[int, Relaxation] = {
        i: relaxation_for(layers[i], m.relu_lower, tangent) for i in acts
    }
    pre: dict[int, tuple[Tensor, Tensor]] = {}
    lines: dict[int, LinearRelaxation] = {}
    intersect = not reference
    for pos, j in enumerate(acts):
        if pos == 0:
            lo, up = _first_block_bounds(net, j, ball)
        else:
            prev = acts[pos - 1]
            lo, up = interval_forward(layers, prev, j, *pre[prev], relax)
            if prior is not None and j in prior and intersect:
                lo, up = lo.maximum(prior[j][0]), up.minimum(prior[j][1])
            if m.hidden == "linear":
                flat_lo = lo.reshape(n, -1)
                flat_up = up.reshape(n, -1)
                if relax[j].is_piecewise_linear and intersect:
                    candidates = (flat_lo < 0) & (flat_up > 0)
                else:
                    candidates = torch.ones_like(flat_lo, dtype=torch.bool)
                lo, up = _tighten_by_backward_pass(
                    net, j, ball, lines, candidates, lo, up, intersect
                )
        up = torch.maximum(up, lo)  # rounding can cross them when the interval is a point
        pre[j] = (lo, up)
        lines[j] = relax[j].linear(lo, up)
    spec = _spec_tensor(C, n, ball.batch_shape, net)
    const = torch.zeros(n, spec.shape[1], dtype=spec.dtype, device=spec.device)
    if m.final == "linear" or not acts:
        lower, upper = backward_linear_bounds(layers, shapes, len(layers), spec, const, lines, ball)
    else:
        last = acts[-1]
        post_lo, post_up = relax[last].interval(*pre[last])
        # Carry the spec back to the last activation's output through the linear layers only.
        a, c = spec, const
        for i in range(len(layers) - 1, last, -1):
            bias = layers[i].bias_map(shapes[i + 1])
            if bias is not None:
                c = c + (a * bias).reshape(*a.shape[:2], -1).sum(-1)
            a = layers[i].transpose(a, shapes[i])
        lower, upper = box_concretize(a, c, post_lo, post_up)
    assert lower is not None and upper is not None
    out_shape = (*ball.batch_shape, spec.shape[1]) if ball.batch_shape else tuple(lower.shape)
    return Bounds(
        lower.reshape(out_shape), upper.reshape(out_shape), m.name, IntermediateBounds(pre)
    )


def _spec_tensor(C: Tensor | None, n: int, batch_shape: tuple[int, ...], net: Network) -> Tensor:
    k = n // batch_shape[0] if batch_shape else 1
    dtype, device = net.dtype, net.device
    outputs = net.num_outputs
    if C is None:
        eye = torch.eye(outputs, dtype=dtype, device=device).reshape(1, outputs, *net.output_shape)
        return eye.expand(n, -1, *net.output_shape)
    C = torch.as_tensor(C).to(dtype=dtype, device=device)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(n, -1, -1)
    elif C.dim() == 3 and C.shape[0] != n:
        if k > 1 and C.shape[0] * k == n:
            C = C.repeat_interleave(k, dim=0)
        elif C.shape[0] == 1:
            C = C.expand(n, -1, -1)
    if C.dim() != 3 or C.shape[0] != n or C.shape[2] != outputs:
        raise InputError(
            f"spec C must be (S, {outputs}) or (batch, S, {outputs}); got {tuple(C.shape)}"
        )
    if not bool(torch.isfinite(C).all()):
        raise InputError("spec C contains NaN or inf values")
    return C.reshape(n, C.shape[1], *net.output_shape)
