"""alpha-optimised bounds of the upstream gradients in a gradient graph (the ``h`` of each
``grad_mul``), before the final functional is optimised (:mod:`nnbound.jacobian.alpha_jacobian`).

The relaxation of ``d * h`` is exact where ``d`` is a point or ``h`` has one sign; elsewhere
its planes are chords over ``[hl, hu]``, so narrower ``h`` bounds tighten everything after it.
Those entries (across 0 with an uncertain derivative, in any ball row) are re-bounded with
their own relaxation parameters per bound (Xu et al. 2021): rows ``+e_k`` and ``-e_k`` of one
lower-bound pass, the parameters of every parameterised node before ``h`` optimised by
projected Adam, the best value per row kept and intersected with the CROWN bound. Tensors are
done in topological order, so each starts from its predecessors' tightened bounds. Above
:data:`BUDGET` parameter entries a tensor keeps its CROWN bounds (memory).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from nnbound.bounds.alpha import LineTable, defaults, param_keys
from nnbound.bounds.alpha_crown import _Adam, _expand
from nnbound.bounds.engine import BoundState, backward
from nnbound.network.graph import Graph, Node
from nnbound.ops.gradient_product import default_mix

BUDGET = 2**24
"""Parameter entries (rows x bounds x entries of every parameterised node) per tensor."""


def _uncertain(state: BoundState, node: Node) -> Tensor:
    """Flat indices of ``h`` entries whose product is relaxed (``d`` not a point, ``h``
    across 0) in some row."""
    (dl, du), (hl, hu) = (state.bounds[i] for i in node.inputs)
    mask = (du > dl) & (hl < 0) & (hu > 0)
    return torch.nonzero(mask.reshape(mask.shape[0], -1).any(0)).squeeze(1)


def make_params(state: BoundState, nodes: list[Node], rows: int) -> tuple[LineTable, dict, dict]:
    """Leaf parameters ``(N, rows, *shape)`` at the defaults: a line table and the grad_mul
    weights ``{node output: {param: tensor}}``."""
    graph, dtype = state.graph, state.input_set.center.dtype
    table = LineTable(state.options)
    thetas = {}
    for key in param_keys(graph, nodes, state.options):
        node = graph.producers[key[0]]
        fam = table.family_of(node, state.bounds[node.inputs[0]])
        if fam is not None:
            thetas[key] = _expand(defaults(fam, key[1]).to(dtype), rows)
    table.table = thetas
    mix = {}
    for node in nodes:
        if node.op == "grad_mul":
            bounds = [state.bounds[i] for i in node.inputs]
            lo, up = default_mix(bool(node.attrs.get("d_interval", False)), bounds)
            mix[node.output] = {
                "mix_lower": _expand(lo.to(dtype), rows),
                "mix_upper": _expand(up.to(dtype), rows),
            }
    return table, thetas, mix


def with_mix(graph: Graph, mix: dict[str, dict[str, Tensor]]) -> Graph:
    """``graph`` with the grad_mul nodes in ``mix`` carrying those weights."""
    nodes = tuple(
        replace(node, params=mix[node.output]) if node.output in mix else node
        for node in graph.nodes
    )
    return Graph(
        nodes, graph.input_shape, graph.output, input_range=graph.input_range, name=graph.name
    )


def param_state(
    state: BoundState, mix: dict[str, dict[str, Tensor]], table: LineTable
) -> BoundState:
    """``state``'s bounds on its graph with the grad_mul weights ``mix`` and the lines of
    ``table``: one optimised pass."""
    return BoundState(
        with_mix(state.graph, mix),
        state.input_set,
        state.options,
        state.bounds,
        line_hook=table,
        coef_hook=state.coef_hook,
    )


def _tighten(state: BoundState, name: str, idx: Tensor, steps: int, lr: float) -> None:
    """Optimise the bounds of entries ``idx`` of tensor ``name`` in place."""
    graph = state.graph
    lo, up = state.bounds[name]
    n, k, dtype = lo.shape[0], idx.numel(), lo.dtype
    nodes = graph.ancestors(name)
    width = sum(math.prod(graph.shapes[node.output]) for node in nodes)
    if n * 2 * k * width > BUDGET:
        return
    table, thetas, mix = make_params(state, nodes, 2 * k)
    params = list(thetas.values()) + [t for d in mix.values() for t in d.values()]
    if not params:
        return
    size = lo[0].numel()
    a = torch.zeros(n, 2 * k, size, dtype=dtype, device=lo.device)
    rows = torch.arange(k, device=lo.device)
    a[:, rows, idx] = 1.0
    a[:, rows + k, idx] = -1.0
    a = a.reshape(n, 2 * k, *lo.shape[1:])
    const = torch.zeros(n, 2 * k, dtype=dtype, device=lo.device)
    flat_lo, flat_up = lo.reshape(n, -1), up.reshape(n, -1)
    best = torch.cat([flat_lo[:, idx], -flat_up[:, idx]], 1)
    adam = _Adam(params, lr)
    for t in range(steps + 1):
        run = param_state(state, mix, table)
        with torch.enable_grad():  # callers may run under no_grad (the CLI tasks)
            value, _, _ = backward(run, name, a, const, upper=False)
            assert value is not None
            done = t == steps or not value.requires_grad  # no parameter reaches it
            grads = None if done else torch.autograd.grad(-value.sum(), params, allow_unused=True)
        best = torch.maximum(best, value.detach())
        if grads is None:
            break
        adam.step(grads)
        with torch.no_grad():
            for p in params:
                p.clamp_(0.0, 1.0)  # projection: every iterate stays sound
    new_lo, new_up = flat_lo.clone(), flat_up.clone()
    new_lo[:, idx] = best[:, :k]
    new_up[:, idx] = torch.maximum(-best[:, k:], best[:, :k])
    state.bounds[name] = (new_lo.reshape(lo.shape), new_up.reshape(up.shape))


def optimise_intermediate(state: BoundState, steps: int, lr: float) -> None:
    """Tighten, in place, the bounds of every ``grad_mul``'s upstream gradient in
    ``state.bounds`` (topological order)."""
    for node in state.graph.nodes:
        if node.op != "grad_mul":
            continue
        idx = _uncertain(state, node)
        if idx.numel():
            _tighten(state, node.inputs[1], idx, steps, lr)


__all__ = ["BUDGET", "make_params", "optimise_intermediate", "param_state", "with_mix"]
