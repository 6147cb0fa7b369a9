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

Pooling: an average pool is a linear layer (its transpose carries the backward pass). A max
pool is relaxed like an activation, from bounds of its input computed the same way as
pre-activation bounds: interval arithmetic uses its exact monotone range, the backward pass
its per-window lines (:mod:`nnbound.relax.maxpool`), in every method above. Its input bounds
appear in ``Bounds.intermediate.pre`` under its layer index.

``reference=False`` (the default) adds two things the reference does not do, both sound and
never looser: each hidden neuron's linear bound is intersected with its interval bound, and for
piecewise-linear activations only neurons the interval bound leaves unstable get a backward
pass (a stable ReLU's relaxation does not depend on its bounds). ``reference=True`` computes
every neuron and never intersects, exactly as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.bounds.centre_products import CentreProducts, TwoDenseBlocks
from nnbound.bounds.centre_split import (
    prefilter_bounds,
    split_backward_bounds,
    two_dense_blocks,
)
from nnbound.bounds.interval import box_concretize, interval_forward
from nnbound.bounds.linear import backward_linear_bounds, padded_indices, start_rows
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.bounds.row_norms import first_block_row_norms
from nnbound.bounds.sides import SideOrder
from nnbound.bounds.work_size import (
    group_end,
    group_overhead,
    group_rows,
    row_macs,
    work_elements,
)
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.layers import (
    NONLINEAR_TYPES,
    Activation,
    Flatten,
    MaxPool2d,
    Normalize,
    Reshape,
)
from nnbound.network.network import Network
from nnbound.relax.base import LinearRelaxation, Relaxation, straddles
from nnbound.relax.maxpool import MaxPoolLines, maxpool_interval, maxpool_lines
from nnbound.relax.registry import relaxation_for
from nnbound.relax.relu import LeakyReluRelaxation, LowerSlope
from nnbound.relax.s_shaped import TangentRule
from nnbound.sets.box import InputSet
from nnbound.sets.lp_ball import LpBall


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

# Elements of one backward-pass coefficient tensor processed at once. Small enough to stay
# in cache: on CPU a CNN's CROWN call ran 3x faster at 2^22 than at 2^26 (one image's rows at
# a time instead of eight), with MLP radius searches unchanged (measured on cifar-2c2f).
_CHUNK_ELEMENTS = 1 << 22
# Largest dense coefficient block the exact first-block row norms are built for under Linf when
# the block has several mixing layers (otherwise interval arithmetic, sound but looser).
_EXACT_FIRST_BLOCK_ELEMENTS = 1 << 26
# Rows bounded together in one backward pass (grouped by similar numbers of unstable neurons).
_ROWS_PER_GROUP = 8
# Least arithmetic (multiply-adds of one side of every candidate's pass) for which a layer's
# passes are split by side (SideOrder other than BOTH): the split makes two to four calls of
# smaller products where there was one, and small ones lose the dead-column compression and
# the matrix rate; measured break-even near 2^29-2^30 on 256- to 1024-wide MLPs.
_SIDE_SPLIT_MIN_MACS = 1 << 30


def get_method(name: str) -> Method:
    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise InputError(f"unknown bound method {name!r}; choose from {', '.join(ALL_METHODS)}")
    return METHODS[key]


def _check_activations(net: Network, method: Method) -> None:
    if not method.relu_only:
        return
    for act in net.activations:
        if not act.op.traits.piecewise_linear:
            raise UnsupportedError(
                f"method {method.name} is defined for (leaky / bounded) ReLU networks; this "
                f"network has {act.name}: use crown-general"
            )


def _first_block_bounds(net: Network, end: int, ball: InputSet) -> tuple[Tensor, Tensor]:
    """Exact bounds of the (purely linear) output of ``layers[:end]`` over the ball."""
    layers, shapes = net.layers, net.shapes
    mid = ball.center
    for layer in layers[:end]:
        mid = layer.forward(mid)
    lo_box, hi_box = ball.box()
    box_lo, box_hi = interval_forward(layers, 0, end, lo_box, hi_box, {})
    mixing = sum(
        1 for layer in layers[:end] if not isinstance(layer, (Flatten, Reshape, Normalize))
    )
    widest = math.prod(shapes[end]) * max(math.prod(s) for s in shapes[: end + 1])
    if not isinstance(ball, LpBall) and mixing > 1 and widest <= _EXACT_FIRST_BLOCK_ELEMENTS:
        # A box has per-coordinate radii, so no row-norm form: its exact bounds come from one
        # backward pass of every output row through the block.
        n, size = mid.shape[0], math.prod(shapes[end])
        idx = torch.arange(size, device=mid.device).expand(n, size)
        a, const, start = start_rows(layers, shapes, end, idx, mid.dtype, mid.device)
        lower, upper = backward_linear_bounds(layers, shapes, start, a, const, {}, ball)
        assert lower is not None and upper is not None
        return lower.reshape(mid.shape), upper.reshape(mid.shape)
    if not isinstance(ball, LpBall) or (
        ball.p == math.inf and (mixing <= 1 or widest > _EXACT_FIRST_BLOCK_ELEMENTS)
    ):
        # Centre/radius arithmetic is exact for one affine map of a box (element-wise and
        # reshaping layers around it keep it exact). With several (a conv then an average
        # pool) it is only sound, so those blocks take the exact row-norm path below when
        # its dense coefficients fit in memory.
        return box_lo, box_hi
    row_norm = first_block_row_norms(layers, shapes, end, ball.q, mid.dtype, mid.device)
    dev = (ball.eps.unsqueeze(1) * row_norm.reshape(1, -1)).reshape(mid.shape)
    lower, upper = mid - dev, mid + dev
    if ball.domain is not None:
        lower, upper = lower.maximum(box_lo), upper.minimum(box_hi)
    return lower, upper


def _line_rows(
    lines: LinearRelaxation | MaxPoolLines, rows: Tensor
) -> LinearRelaxation | MaxPoolLines:
    """The lines of input-set rows ``rows``."""
    if isinstance(lines, MaxPoolLines):
        return lines.rows(rows)
    tensors = (lines.lower_slope, lines.lower_bias, lines.upper_slope, lines.upper_bias)
    return LinearRelaxation(*(t[rows] for t in tensors))


def _tighten(
    candidates: Tensor,
    lower: Tensor,
    upper: Tensor,
    intersect: bool,
    width: int,
    row_work: int,
    rows_per_group: int,
    bound_rows: Callable[[Tensor, Tensor], tuple[Tensor | None, Tensor | None]],
) -> tuple[Tensor, Tensor]:
    """Bounds of the neurons ``candidates`` (``(N, M)`` bool mask over the flat pre-activation)
    from ``bound_rows(rows, idx)`` (ball rows ``rows``, their candidates' padded flat indices
    ``idx``; returns lower and upper ``(len(rows), U)``, either ``None`` when that side is not
    computed), written into ``lower``/``upper`` (kept where tighter when ``intersect``).

    Rows are grouped by how many candidates they have (largest first) so that padding every
    row of a group to the group's largest count wastes little work: a row starts a new group
    where the padded arithmetic that saves (``row_work``: the multiply-adds of one candidate's
    pass) exceeds what a group costs (:func:`~nnbound.bounds.work_size.group_end`). A group
    holds at most ``rows_per_group`` rows and about ``_CHUNK_ELEMENTS`` coefficients of
    ``width`` each (on a CPU; on a GPU no row cap, more elements and no new group for
    padding, see :mod:`~nnbound.bounds.work_size`).
    Padding repeats a row's first candidate, so every write is that neuron's own bound; a row
    without candidates keeps its bounds (as it would if bounded alone).
    """
    n = candidates.shape[0]
    flat_lo = lower.reshape(n, -1).clone()
    flat_up = upper.reshape(n, -1).clone()
    counts = candidates.sum(1)
    order = torch.argsort(counts, descending=True, stable=True)
    budget = work_elements(lower.device, lower.dtype, _CHUNK_ELEMENTS)
    rows_per_group = group_rows(lower.device, rows_per_group)
    sorted_counts = counts[order].tolist()
    overhead = group_overhead(lower.device, row_work)
    start = 0
    while start < n:
        largest = sorted_counts[start]
        if largest == 0:
            break
        fit = max(1, budget // (largest * width))
        cap = min(fit, rows_per_group)
        end = group_end(sorted_counts, start, cap, slack=0, row_work=row_work, overhead=overhead)
        rows = order[start:end]
        start = end
        idx = padded_indices(candidates[rows])
        new_lo, new_up = bound_rows(rows, idx)
        for flat, new, take in ((flat_lo, new_lo, torch.maximum), (flat_up, new_up, torch.minimum)):
            if new is None:  # a side not asked for keeps its bounds
                continue
            block = flat[rows]
            old = block.gather(1, idx)
            best = take(old, new) if intersect else new
            flat[rows] = block.scatter(1, idx, best)  # every row of a group has candidates
    return flat_lo.reshape(lower.shape), flat_up.reshape(upper.shape)


def _tighten_by_backward_pass(
    net: Network,
    j: int,
    ball: InputSet,
    lines: dict[int, LinearRelaxation | MaxPoolLines],
    candidates: Tensor,
    lower: Tensor,
    upper: Tensor,
    intersect: bool,
    sides: tuple[bool, bool] = (True, True),
) -> tuple[Tensor, Tensor]:
    """Backward-pass bounds of the neurons ``candidates`` of activation ``j`` (see
    :func:`_tighten`), of the sides ``(lower, upper)`` that ``sides`` asks for."""
    layers, shapes = net.layers, net.shapes

    def bound_rows(rows: Tensor, idx: Tensor) -> tuple[Tensor | None, Tensor | None]:
        sub_ball = ball.rows(rows)
        sub_lines = {k: _line_rows(v, rows) for k, v in lines.items()}
        a, const, end = start_rows(layers, shapes, j, idx, ball.center.dtype, ball.center.device)
        return backward_linear_bounds(
            layers, shapes, end, a, const, sub_lines, sub_ball, lower=sides[0], upper=sides[1]
        )

    width = max(math.prod(s) for s in shapes[: j + 1])
    work = _pass_macs(net, j)
    return _tighten(candidates, lower, upper, intersect, width, work, _ROWS_PER_GROUP, bound_rows)


def _pass_macs(net: Network, j: int) -> int:
    """Multiply-adds of one row's backward pass from activation ``j`` to the input."""
    return row_macs(
        (getattr(layer, "weight", None), math.prod(net.shapes[i + 1]))
        for i, layer in enumerate(net.layers[:j])
    )


def _tighten_signs(
    net: Network,
    j: int,
    ball: InputSet,
    lines: dict[int, LinearRelaxation | MaxPoolLines],
    candidates: Tensor,
    lower: Tensor,
    upper: Tensor,
    order: SideOrder | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`_tighten_by_backward_pass` for a layer whose bounds are read only for their sign
    (a ReLU's state): a neuron positive at the centre can only be proved active, by its lower
    bound, one negative only inactive, by its upper bound, so each gets that one side (its
    other side keeps its interval bound, which the centre's value already puts on the same
    side of 0 as a backward pass would): the same states for half the products. Neurons at
    exactly 0 get both sides. The centre need not lie in the set for soundness: only the
    tightness of the states relies on it.

    With ``order`` (a hidden layer whose bounds the next layers read, see
    :class:`~nnbound.bounds.sides.SideOrder`): ``SIGNS_FIRST`` then gives the neurons left
    across 0 their other side; ``INACTIVE_FIRST`` gives only the neurons negative at the
    centre their upper side first, then every neuron not proved inactive what it lacks.
    """
    n = candidates.shape[0]
    with torch.no_grad():
        centre = ball.center
        for layer in net.layers[:j]:
            centre = layer.forward(centre)
    z0 = centre.reshape(n, -1)
    negative = z0 < 0

    def passes(groups: list[tuple[Tensor, tuple[bool, bool]]]) -> tuple[Tensor, Tensor]:
        lo, up = lower, upper
        for picked, sides in groups:
            mask = candidates & picked
            if bool(mask.any()):
                lo, up = _tighten_by_backward_pass(net, j, ball, lines, mask, lo, up, True, sides)
        return lo, up

    first = [(negative, (False, True))]
    if order is not SideOrder.INACTIVE_FIRST:
        first = [(z0 > 0, (True, False)), *first, (z0 == 0, (True, True))]
    lower, upper = passes(first)
    if order is None:
        return lower, upper
    flat_lo, flat_up = lower.reshape(n, -1), upper.reshape(n, -1)
    if order is SideOrder.INACTIVE_FIRST:
        return passes([(~negative, (True, True)), (negative & (flat_up > 0), (True, False))])
    still = straddles(flat_lo, flat_up, (0.0,))
    return passes([(still & (z0 > 0), (False, True)), (still & negative, (True, False))])


def _tighten_by_split(
    blocks: TwoDenseBlocks,
    cache: CentreProducts,
    relax: Relaxation,
    lines: LinearRelaxation,
    ball: InputSet,
    candidates: Tensor,
    lower: Tensor,
    upper: Tensor,
    intersect: bool,
    kinks: tuple[float, ...] | None,
) -> tuple[Tensor, Tensor]:
    """:func:`_tighten_by_backward_pass` for the second activation of a two-Dense-block
    network, by :func:`~nnbound.bounds.centre_split.split_backward_bounds`.

    With ``kinks`` (an Lp ball without a domain, and nothing downstream reads a stable
    neuron's bounds beyond its side of the kinks), every neuron first gets the cheaper bound of
    :func:`~nnbound.bounds.centre_split.prefilter_bounds`, and only those it leaves across a
    kink get the exact pass; the exact norms then become the centre's reference for the next
    call.
    """
    refs, terms = None, None
    if kinks is not None and isinstance(ball, LpBall) and ball.domain is None:
        cheap_lo, cheap_up, refs, terms = prefilter_bounds(blocks, cache, relax, lines, ball)
        # Only the candidates take them: the others keep the bounds that showed them stable.
        mask = candidates.view_as(lower)
        lower = torch.where(mask, lower.maximum(cheap_lo.view_as(lower)), lower)
        upper = torch.where(mask, upper.minimum(cheap_up.view_as(upper)), upper)
        candidates = candidates & straddles(lower, upper, kinks).reshape(candidates.shape)

    def bound_rows(rows: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        sub_lines = _line_rows(lines, rows)
        assert isinstance(sub_lines, LinearRelaxation)
        sub_refs = None if refs is None else (refs, rows)
        sub_terms = None if terms is None else terms.rows(rows, rows.cpu().numpy())
        return split_backward_bounds(
            blocks, cache, relax, sub_lines, ball.rows(rows), idx, sub_refs, sub_terms
        )

    # Both sides' coefficients (2 rows per candidate) of the input width; no group cap.
    width = 2 * blocks.w1.shape[1]
    # at most every first-block neuron's column, on both sides
    work = 2 * blocks.w1.numel()
    lower, upper = _tighten(
        candidates, lower, upper, intersect, width, work, candidates.shape[0], bound_rows
    )
    if refs is not None:
        cache.store_references(blocks, refs)
    return lower, upper


def layerwise_bounds(
    net: Network,
    ball: InputSet,
    method: str = "crown-adaptive",
    C: Tensor | None = None,
    *,
    reference: bool = False,
    tangent: TangentRule = TangentRule.EXACT,
    prior: dict[int, tuple[Tensor, Tensor]] | None = None,
    centre_cache: CentreProducts | None = None,
    last_signs_only: bool = False,
    sides: SideOrder = SideOrder.BOTH,
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
        centre_cache: products kept across calls with the same centres (a radius search):
            with it, the second activation of an MLP is bounded by
            :func:`~nnbound.bounds.centre_split.split_backward_bounds` (the same bounds up to
            rounding, multiplying only the unstable first-layer neurons' columns).
        last_signs_only: the caller reads the last relaxed layer's bounds only for the state
            of each ReLU there (which side of 0 they lie on; a Jacobian chain's derivative
            intervals): each of its neurons then gets only the side of its bound that can
            settle its state (:func:`_tighten_signs`). Its bounds, and the spec's, are then
            looser on the other side; the states are the same. Ignored with ``reference``.
        sides: which sides of a hidden ReLU layer's candidates get backward passes, in what
            order (:class:`~nnbound.bounds.sides.SideOrder`): ``INACTIVE_FIRST`` gives the
            same final bounds as ``BOTH`` for fewer passes, ``SIGNS_FIRST`` about half the
            passes of the neurons it proves stable but possibly looser bounds (then
            ``Bounds.sides_skipped``). Only in layers with enough work for the split to pay
            (:data:`_SIDE_SPLIT_MIN_MACS`). Ignored with ``reference``.

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
    # Layers relaxed by their input bounds: activations and max pools (acts, below).
    acts = [i for i, layer in enumerate(layers) if isinstance(layer, NONLINEAR_TYPES)]
    relax: dict[int, Relaxation] = {
        i: relaxation_for(layers[i], m.relu_lower, tangent)
        for i in acts
        if isinstance(layers[i], Activation)
    }
    pre: dict[int, tuple[Tensor, Tensor]] = {}
    lines: dict[int, LinearRelaxation | MaxPoolLines] = {}
    intersect = not reference
    sides_skipped = False
    for pos, j in enumerate(acts):
        if pos == 0:
            lo, up = _first_block_bounds(net, j, ball)
        else:
            prev = acts[pos - 1]
            lo, up = interval_forward(layers, prev, j, *pre[prev], relax)
            if prior is not None and j in prior and intersect:
                lo, up = lo.maximum(prior[j][0]), up.minimum(prior[j][1])
            # Right after another relaxed layer (a ReLU then a max pool) the interval is
            # already at least as tight as a backward pass: that pass would go through the
            # previous layer's lines, whose range over its own input bounds contains the
            # interval (monotone activations, max pool), so it is skipped (the reference's
            # exact numbers, with two activations in a row, keep their pass).
            pooled = isinstance(layers[j], MaxPool2d) or isinstance(layers[prev], MaxPool2d)
            adjacent = prev == j - 1 and (intersect or pooled)
            if m.hidden == "linear" and not adjacent:
                flat_lo = lo.reshape(n, -1)
                flat_up = up.reshape(n, -1)
                if isinstance(layers[j], MaxPool2d):
                    # every input of a window shapes its lines
                    candidates = torch.ones_like(flat_lo, dtype=torch.bool)
                elif relax[j].is_piecewise_linear and intersect:
                    # kinks: (0,) for ReLU; (0, cap) bounded ReLU
                    candidates = straddles(flat_lo, flat_up, relax[j].kinks)
                else:
                    candidates = torch.ones_like(flat_lo, dtype=torch.bool)
                blocks = None
                if pos == 1 and centre_cache is not None:
                    blocks = two_dense_blocks(net, prev, j)
                prev_lines = lines[prev]
                if (
                    blocks is not None
                    and relax[prev].is_piecewise_linear
                    and isinstance(prev_lines, LinearRelaxation)
                ):
                    # When this is the last relaxed layer, nothing downstream reads a stable
                    # neuron's bounds beyond its side of the kinks (its lines need no more).
                    last = pos == len(acts) - 1 and intersect
                    lo, up = _tighten_by_split(
                        blocks,
                        centre_cache,
                        relax[prev],
                        prev_lines,
                        ball,
                        candidates,
                        lo,
                        up,
                        intersect,
                        relax[j].kinks if last else None,
                    )
                elif (
                    last_signs_only
                    and intersect
                    and pos == len(acts) - 1
                    and isinstance(layers[j], Activation)
                    and relax[j].kinks == (0.0,)
                ):
                    lo, up = _tighten_signs(net, j, ball, lines, candidates, lo, up)
                elif (
                    sides is not SideOrder.BOTH
                    and intersect
                    # a ReLU without leak: zero on its inactive side, whatever its bounds
                    and isinstance(relax[j], LeakyReluRelaxation)
                    and relax[j].alpha == 0
                    and int(candidates.sum()) * _pass_macs(net, j) >= _SIDE_SPLIT_MIN_MACS
                ):
                    # The last relaxed layer's bounds are read only for its lines, which a
                    # stable neuron's skipped side does not change: settling sides first there
                    # gives the same final bounds.
                    order = SideOrder.SIGNS_FIRST if pos == len(acts) - 1 else sides
                    lo, up = _tighten_signs(net, j, ball, lines, candidates, lo, up, order)
                    sides_skipped |= sides is SideOrder.SIGNS_FIRST and pos < len(acts) - 1
                else:
                    lo, up = _tighten_by_backward_pass(
                        net, j, ball, lines, candidates, lo, up, intersect
                    )
        up = torch.maximum(up, lo)  # rounding can cross them when the interval is a point
        pre[j] = (lo, up)
        layer = layers[j]
        if isinstance(layer, MaxPool2d):
            lines[j] = maxpool_lines(layer, shapes[j], lo, up)
        else:
            lines[j] = relax[j].linear(lo, up)
    spec = _spec_tensor(C, n, ball.batch_shape, net)
    const = torch.zeros(n, spec.shape[1], dtype=spec.dtype, device=spec.device)
    if m.final == "linear" or not acts:
        lower, upper = backward_linear_bounds(layers, shapes, len(layers), spec, const, lines, ball)
    else:
        lower, upper = _final_interval_bounds(net, acts[-1], relax, pre, spec, const)
    assert lower is not None and upper is not None
    out_shape = (*ball.batch_shape, spec.shape[1]) if ball.batch_shape else tuple(lower.shape)
    return Bounds(
        lower.reshape(out_shape),
        upper.reshape(out_shape),
        m.name,
        IntermediateBounds(pre),
        sides_skipped,
    )


def _final_interval_bounds(
    net: Network,
    last: int,
    relax: dict[int, Relaxation],
    pre: dict[int, tuple[Tensor, Tensor]],
    spec: Tensor,
    const: Tensor,
) -> tuple[Tensor, Tensor]:
    """Bounds of the spec from the interval of the last relaxed layer's output, carried back
    to it through the linear layers above (the reference's ``*-interval`` last layer)."""
    layers, shapes = net.layers, net.shapes
    last_layer = layers[last]
    if isinstance(last_layer, MaxPool2d):
        post_lo, post_up = maxpool_interval(last_layer, *pre[last])
    else:
        post_lo, post_up = relax[last].interval(*pre[last])
    a, c = spec, const
    for i in range(len(layers) - 1, last, -1):
        bias = layers[i].bias_map(shapes[i + 1])
        if bias is not None:
            c = c + (a * bias).reshape(*a.shape[:2], -1).sum(-1)
        a = layers[i].transpose(a, shapes[i])
    return box_concretize(a, c, post_lo, post_up)


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
