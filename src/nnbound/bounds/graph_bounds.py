"""Layer-wise bound methods (IBP, Fast-Lin, CROWN, CROWN-general) on a computation graph.

Every tensor gets interval bounds in topological order (each operator's interval rule on its
inputs' bounds). A tensor that feeds an element-wise activation or a relaxed operator is then
tightened by a backward pass from it (:func:`nnbound.bounds.engine.backward`) with the
relaxations of everything before it, and the bounds of every later tensor are computed from
the tightened ones. As on chains (:mod:`nnbound.bounds.methods`), ``reference=False`` keeps
the tighter of the interval and linear bound of each entry and, where every consumer of a
tensor is piecewise linear, back-propagates only entries whose interval contains a kink; the
output of a monotone relaxed operator (a ReLU feeding a max pool) keeps its interval bound,
which a backward pass through that operator's own lines cannot beat.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.bounds.engine import BoundState, LineHook, backward
from nnbound.bounds.linear import start_rows
from nnbound.bounds.methods import (
    _CHUNK_ELEMENTS,
    _ROWS_PER_GROUP,
    Method,
    _first_block_bounds,
    _spec_tensor,
    _tighten,
    get_method,
)
from nnbound.bounds.patches import Patches
from nnbound.bounds.patches_rules import row_elements
from nnbound.bounds.result import Bounds, IntermediateBounds
from nnbound.bounds.work_size import row_macs, work_elements
from nnbound.errors import InputError, UnsupportedError
from nnbound.network.chain_graph import node_layer
from nnbound.network.graph import Graph, Node
from nnbound.network.layers import LINEAR_TYPES, Conv2d, Dense, Flatten, Normalize, Reshape
from nnbound.network.network import Network
from nnbound.ops.base import Interval, OpKind, RelaxOptions
from nnbound.ops.registry import get_op
from nnbound.relax.base import straddles
from nnbound.relax.s_shaped import TangentRule
from nnbound.sets.box import InputSet
from nnbound.sets.lp_ball import LpBall


def relaxed_nodes(graph: Graph, nodes: list[Node] | None = None) -> list[Node]:
    """The nodes whose backward rule reads their inputs' bounds (not linear)."""
    return [
        n
        for n in (graph.nodes if nodes is None else nodes)
        if get_op(n.op, n).kind is not OpKind.LINEAR
    ]


def check_method_ops(graph: Graph, method: Method) -> None:
    """Fast-Lin and CROWN-adaptive are defined for piecewise-linear activations only."""
    if not method.relu_only:
        return
    for node in graph.nodes:
        op = get_op(node.op, node)
        if op.kind is OpKind.ELEMENTWISE and not op.traits.piecewise_linear:
            raise UnsupportedError(
                f"method {method.name} is defined for (leaky / bounded) ReLU networks; "
                f"{node.where} is {op.name}: use crown-general"
            )


def needs_bounds(graph: Graph, nodes: list[Node]) -> dict[str, list[Node]]:
    """``{tensor: its relaxed consumers}`` for every tensor a relaxed node among ``nodes``
    reads (the graph input excluded: its bounds are the input set's box)."""
    out: dict[str, list[Node]] = {}
    for node in relaxed_nodes(graph, nodes):
        for name in dict.fromkeys(node.inputs):
            if name != graph.input_name:
                out.setdefault(name, []).append(node)
    return out


def _candidates(
    consumers: list[Node], lo: Tensor, up: Tensor, intersect: bool, options: RelaxOptions
) -> Tensor:
    """Entries whose bounds matter: those across a kink when every consumer is piecewise
    linear (a stable entry's lines do not depend on its bounds), else all."""
    n = lo.shape[0]
    ops = [get_op(c.op, c) for c in consumers]
    if intersect and all(
        op.kind is OpKind.ELEMENTWISE and op.traits.piecewise_linear for op in ops
    ):
        kinks = tuple(
            sorted(
                {
                    k
                    for op, c in zip(ops, consumers, strict=True)
                    for k in op.relaxation(c, options).kinks
                }
            )
        )
        return straddles(lo.reshape(n, -1), up.reshape(n, -1), kinks)
    return torch.ones(n, lo[0].numel(), dtype=torch.bool, device=lo.device)


def tighten_tensor(
    state: BoundState, name: str, candidates: Tensor, bounds: Interval, intersect: bool
) -> Interval:
    """Backward-pass bounds of the entries ``candidates`` (``(N, M)`` mask) of tensor
    ``name``, written into ``bounds`` (kept where tighter when ``intersect``)."""
    graph = state.graph
    shape = graph.shapes[name]
    lo, up = bounds
    ref = lo

    producer = graph.producers.get(name)
    layer = node_layer(producer) if producer is not None else None
    if not isinstance(layer, (Dense, Conv2d)):
        layer = None

    ancestors = graph.ancestors(name)
    if state.patches and len(shape) == 3:
        width = row_elements(graph, name)  # rows start as patches (see bound_slice)
    else:
        width = max(math.prod(graph.shapes[n.output]) for n in ancestors)
        width = max(width, graph.num_inputs)
    # Candidates bounded in one pass per input-set row: every tensor the pass holds is
    # (rows, candidates, width), so a wide layer's candidates go in slices (cache-sized on a
    # CPU, as the chain path's chunks; larger on a GPU, whose kernels want the work).
    budget = work_elements(ref.device, ref.dtype, _CHUNK_ELEMENTS)
    per_pass = max(1, budget // width)

    def bound_slice(sub: BoundState, idx: Tensor) -> tuple[Tensor, Tensor]:
        n, u = idx.shape
        if state.patches and len(shape) == 3:
            # Rows on an image tensor as patches: each row's window only (its receptive
            # field), carried densely from where the window is no smaller than the image.
            const = torch.zeros(n, u, dtype=ref.dtype, device=ref.device)
            c_lo, c_up, _ = backward(sub, name, Patches.identity(idx, shape, ref.dtype), const)
        elif layer is not None and producer is not None:
            # Rows of a dense / conv output start one node lower, as the weight rows (or the
            # kernel at the receptive field): no one-hot product.
            src = producer.inputs[0]
            a, const, _ = start_rows(
                (layer,), [graph.shapes[src], shape], 1, idx, ref.dtype, ref.device
            )
            c_lo, c_up, _ = backward(sub, src, a, const)
        else:
            size = math.prod(shape)
            a = torch.zeros(n, u, size, dtype=ref.dtype, device=ref.device)
            a.scatter_(2, idx.unsqueeze(-1), 1.0)
            const = torch.zeros(n, u, dtype=ref.dtype, device=ref.device)
            c_lo, c_up, _ = backward(sub, name, a.reshape(n, u, *shape), const)
        assert c_lo is not None and c_up is not None
        return c_lo, c_up

    def bound_rows(rows: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        sub = state.rows(rows)
        parts = [
            bound_slice(sub, idx[:, k : k + per_pass]) for k in range(0, idx.shape[1], per_pass)
        ]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    work = row_macs(
        (node.params.get("weight"), math.prod(graph.shapes[node.output])) for node in ancestors
    )
    return _tighten(candidates, lo, up, intersect, width, work, _ROWS_PER_GROUP, bound_rows)


def _scale_as_normalize(node: Node) -> Normalize | None:
    """``x * scale + shift`` as ``(x - mean) / std`` when no scale is zero (batch norm)."""
    scale, shift = node.params.get("scale"), node.params.get("shift")
    if scale is None or bool((scale == 0).any()):
        return None
    mean = -shift / scale if shift is not None else torch.zeros_like(scale)
    return Normalize(mean, 1.0 / scale)


def _first_block(graph: Graph, name: str, input_set: InputSet) -> Interval | None:
    """Exact bounds of ``name`` in closed form when it is the input carried through a chain
    of chain-IR linear layers (the chain's first block: centre/radius for one affine map of a
    box, row norms for an Lp ball), or ``None``."""
    nodes = graph.ancestors(name)
    prev, layers = graph.input_name, []
    for node in nodes:
        same_shape = graph.shapes[node.output] == graph.shapes[prev]
        layer = (
            (_scale_as_normalize(node) if same_shape else None)
            if node.op == "scale"
            else node_layer(node)
        )
        if node.inputs != (prev,) or layer is None or not isinstance(layer, LINEAR_TYPES):
            return None
        layers.append(layer)
        prev = node.output
    mixing = sum(1 for la in layers if not isinstance(la, (Flatten, Reshape, Normalize)))
    if not layers or (mixing > 1 and not isinstance(input_set, LpBall)):
        return None
    prefix = Network(tuple(layers), graph.input_shape)
    return _first_block_bounds(prefix, len(layers), input_set)


def intermediate_bounds(
    graph: Graph,
    input_set: InputSet,
    options: RelaxOptions,
    *,
    linear_hidden: bool = True,
    intersect: bool = True,
    prior: dict[str, Interval] | None = None,
    line_hook: LineHook | None = None,
    upto: str | None = None,
    patches: bool = True,
) -> BoundState:
    """A :class:`BoundState` with bounds of every tensor the output (or ``upto``) depends on.

    Args:
        graph, input_set, options: what is bounded, over which set, with which relaxations.
        linear_hidden: tighten the inputs of relaxed nodes by backward passes (CROWN); with
            ``False`` every tensor keeps its interval bound (IBP, the ``-interval`` methods).
        intersect: keep the tighter of the interval and the linear bound, and back-propagate
            only entries across a kink where that is all that matters (``False``: the
            reference's every-neuron rule).
        prior: bounds known to hold over the set (a parent domain's, a larger ball's), by
            tensor name; intersected in.
        line_hook: see :data:`~nnbound.bounds.engine.LineHook`.
        upto: the tensor whose ancestors are bounded (default: the output).
        patches: see :attr:`~nnbound.bounds.engine.BoundState.patches`.
    """
    state = BoundState(graph, input_set, options, line_hook=line_hook, patches=patches)
    state.bounds[graph.input_name] = input_set.box()
    nodes = graph.ancestors(upto or graph.output)
    need = needs_bounds(graph, nodes)
    # Tensors with no relaxed node upstream are affine in the input: a backward pass bounds
    # them exactly over the set, which every method uses (the chain's first block).
    affine = {graph.input_name}
    for node in nodes:
        if get_op(node.op, node).kind is OpKind.LINEAR and all(i in affine for i in node.inputs):
            affine.add(node.output)
    for node in nodes:
        op = get_op(node.op, node)
        lo, up = op.interval(node, [state.bounds[i] for i in node.inputs])
        name = node.output
        if prior is not None and name in prior and intersect:
            lo, up = lo.maximum(prior[name][0]), up.minimum(prior[name][1])
        # The output of a monotone relaxed operator is bounded exactly by its interval rule
        # over its input's box, and a backward pass through its own lines cannot beat that.
        exact = intersect and op.kind is not OpKind.LINEAR and op.traits.monotone
        first_block = _first_block(graph, name, input_set) if name in need else None
        if first_block is not None:
            lo, up = first_block
        elif name in need and not exact and (linear_hidden or name in affine):
            # Every entry of an affine tensor: its exact bounds also feed later interval
            # bounds, which its stable entries' box bounds (loose for L2 / L1) would widen.
            candidates = (
                torch.ones(lo.shape[0], lo[0].numel(), dtype=torch.bool, device=lo.device)
                if name in affine
                else _candidates(need[name], lo, up, intersect, options)
            )
            if bool(candidates.any()):
                lo, up = tighten_tensor(state, name, candidates, (lo, up), intersect)
        state.bounds[name] = (lo, torch.maximum(up, lo))
    return state


def graph_bounds(
    graph: Graph,
    input_set: InputSet,
    method: str | Method = "crown",
    C: Tensor | None = None,
    *,
    reference: bool = False,
    tangent: TangentRule = TangentRule.EXACT,
    prior: dict[str, Interval] | None = None,
    patches: bool = True,
) -> Bounds:
    """Bounds of ``C @ graph(x)`` for every x in ``input_set`` with a layer-wise method.

    Arguments as :func:`nnbound.bounds.methods.layerwise_bounds`; ``prior`` is keyed by tensor
    name, ``patches`` as in :func:`intermediate_bounds`, and ``Bounds.intermediate.pre``
    holds the bounds of every tensor a relaxed node reads, by name.
    """
    m = get_method(method) if isinstance(method, str) else method
    check_method_ops(graph, m)
    if tuple(input_set.center.shape[1:]) != graph.input_shape:
        raise InputError(
            f"input set has shape {tuple(input_set.center.shape[1:])}, the graph expects "
            f"{graph.input_shape}"
        )
    if input_set.center.dtype != graph.dtype:
        raise InputError(
            f"input dtype {input_set.center.dtype} differs from the graph's {graph.dtype}"
        )
    options = RelaxOptions(m.relu_lower, tangent)
    state = intermediate_bounds(
        graph,
        input_set,
        options,
        linear_hidden=m.hidden == "linear",
        intersect=not reference,
        prior=prior,
        patches=patches,
    )
    n = input_set.center.shape[0]
    spec = _spec_tensor(C, n, input_set.batch_shape, graph)  # type: ignore[arg-type]
    const = torch.zeros(n, spec.shape[1], dtype=spec.dtype, device=spec.device)
    if m.final == "linear":
        lower, upper, _ = backward(state, graph.output, spec, const)
    else:
        # The spec goes back through the linear nodes after the relaxed ones (exact) and is
        # concretized over the relaxed nodes' output intervals.
        stop = frozenset(n.output for n in relaxed_nodes(graph))
        lower, upper, _ = backward(state, graph.output, spec, const, stop=stop)
    assert lower is not None and upper is not None
    batch = input_set.batch_shape
    out_shape = (*batch, spec.shape[1]) if batch else tuple(lower.shape)
    need = needs_bounds(graph, graph.ancestors(graph.output))
    pre = {name: state.bounds[name] for name in need}
    return Bounds(
        lower.reshape(out_shape), upper.reshape(out_shape), m.name, IntermediateBounds(pre)
    )  # type: ignore[arg-type]


__all__ = [
    "check_method_ops",
    "graph_bounds",
    "intermediate_bounds",
    "needs_bounds",
    "relaxed_nodes",
    "tighten_tensor",
]
