"""Random computation graphs for soundness tests and benchmarks.

A :class:`GraphBuilder` appends nodes and infers shapes as it goes (so a block can read the
shape of what it was given); :func:`random_graph` stacks random blocks on an image or flat
input: chains, residual ``add`` / ``sub`` skips (nested too), ``concat`` of branches,
``slice`` s feeding different branches, pooling, ``scale``, ``transpose``, ``reshape``,
``pad``, products of two computed tensors, ``softmax`` and every activation.

Which blocks exist depends on which operators :data:`nnbound.ops.registry.OPS` holds when the
graph is drawn, so the tests grow with the registry instead of breaking before an operator
lands. Structure comes from a :class:`Chooser` (:class:`RandomChooser`: a seeded
:class:`random.Random`, which spreads a few dozen examples over far more shapes than
hypothesis' own draws do); weights from a seeded torch generator.

Test files import this module as ``graph_factory`` (they put ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from nnbound.network.graph import Graph, Node, Shape
from nnbound.ops.base import OpKind
from nnbound.ops.registry import OPS, get_op

T = TypeVar("T")

# Element-wise operators whose domain is not all reals (or that need attrs a random graph
# cannot guess): never drawn as activations.
NOT_ACTIVATIONS = frozenset(
    {"log", "sqrt", "rsqrt", "reciprocal", "pow", "exp", "identity", "derivative"}
)
# The parameter of an activation family, per name (the rest take none).
ALPHAS: dict[str, tuple[float, ...]] = {
    "leaky_relu": (0.01, 0.3),
    "elu": (0.5, 1.0),
    "brelu": (0.25, 1.0, 3.0),
}


def activations() -> tuple[str, ...]:
    """Every element-wise operator registered now that is safe on all reals."""
    return tuple(
        sorted(
            name
            for name, op in OPS.items()
            if op.kind is OpKind.ELEMENTWISE and name not in NOT_ACTIVATIONS
        )
    )


def piecewise_linear(graph: Graph) -> bool:
    """True if every element-wise node of ``graph`` is piecewise linear (so Fast-Lin and
    CROWN-adaptive are defined on it)."""
    for node in graph.nodes:
        op = get_op(node.op, node)
        if op.kind is OpKind.ELEMENTWISE and not op.traits.piecewise_linear:
            return False
    return True


def has(*ops: str) -> bool:
    """Whether every operator in ``ops`` is registered."""
    return all(name in OPS for name in ops)


class Chooser(Protocol):
    """Where a random graph's structure comes from."""

    def pick(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...


@dataclass
class RandomChooser:
    """A :class:`Chooser` from :class:`random.Random` (benchmarks, quick scripts)."""

    rng: random.Random

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


@dataclass
class GraphBuilder:
    """Appends nodes to a graph under construction; weights are float64 from ``gen``.

    Attributes:
        input_shape: per-sample input shape.
        gen: the generator every weight comes from.
        weight_scale: weights are ``N(0, weight_scale^2 / fan_in)``.
        bias_scale: biases are ``N(0, bias_scale^2)``.
    """

    input_shape: Shape
    gen: torch.Generator
    weight_scale: float = 1.0
    bias_scale: float = 0.3
    nodes: list[Node] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)
    input_name: str = "input"
    activations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.shapes[self.input_name] = tuple(self.input_shape)

    # -- primitives ----------------------------------------------------------------------
    def randn(self, *shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64) * scale

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        params: dict[str, Tensor] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> str:
        """Append one node; returns the name of the tensor it writes."""
        name = f"t{len(self.nodes) + 1}"
        node = Node(op, tuple(inputs), name, params or {}, attrs or {}, f"{op}{len(self.nodes)}")
        out = get_op(op, node).out_shape(node, [self.shapes[i] for i in inputs])
        self.nodes.append(node)
        self.shapes[name] = tuple(int(s) for s in out)
        return name

    def graph(self, output: str, name: str = "random-graph") -> Graph:
        return Graph(tuple(self.nodes), tuple(self.input_shape), output, self.input_name, name=name)

    # -- layers --------------------------------------------------------------------------
    def dense(self, x: str, n_out: int, scale: float | None = None) -> str:
        x = self.flat(x)
        n_in = self.shapes[x][0]
        s = (self.weight_scale if scale is None else scale) / math.sqrt(n_in)
        params = {
            "weight": self.randn(n_out, n_in, scale=s),
            "bias": self.randn(n_out, scale=self.bias_scale),
        }
        return self.node("dense", [x], params)

    def conv(
        self,
        x: str,
        c_out: int,
        k: int = 3,
        stride: int = 1,
        padding: int | None = None,
        scale: float | None = None,
    ) -> str:
        c_in = self.shapes[x][0]
        pad = k // 2 if padding is None else padding
        s = (self.weight_scale if scale is None else scale) / math.sqrt(c_in * k * k)
        params = {
            "weight": self.randn(c_out, c_in, k, k, scale=s),
            "bias": self.randn(c_out, scale=self.bias_scale),
        }
        attrs = {"stride": (stride, stride), "padding": (pad, pad), "dilation": (1, 1), "groups": 1}
        return self.node("conv2d", [x], params, attrs)

    def act(self, x: str, name: str, alpha: float | None = None) -> str:
        attrs = {} if alpha is None else {"alpha": float(alpha)}
        return self.node(name, [x], attrs=attrs)

    def flat(self, x: str) -> str:
        return x if len(self.shapes[x]) == 1 else self.node("flatten", [x])

    def same_shape(self, x: str, like: str) -> str:
        """A linear map of ``x`` to ``like``'s shape (a dense layer, or a conv for images of
        the same size)."""
        shape, target = self.shapes[x], self.shapes[like]
        if shape == target:
            return x
        if len(shape) == 3 and len(target) == 3 and shape[1:] == target[1:]:
            return self.conv(x, target[0], k=1)
        y = self.dense(x, math.prod(target))
        return y if len(target) == 1 else self.node("reshape", [y], attrs={"shape": target})


# -- random blocks -----------------------------------------------------------------------
Block = Callable[[GraphBuilder, Chooser, str, int], str]


def _activation(b: GraphBuilder, ch: Chooser, x: str) -> str:
    name = ch.pick(b.activations or activations())
    alphas = ALPHAS.get(name)
    return b.act(x, name, ch.pick(alphas) if alphas else None)


def _linear(b: GraphBuilder, ch: Chooser, x: str, width: int) -> str:
    """A dense layer (flat) or a same-size conv (image) to ``width`` features / channels."""
    if len(b.shapes[x]) == 3:
        return b.conv(x, width, k=ch.pick((1, 3)))
    return b.dense(x, width)


def _width(b: GraphBuilder, ch: Chooser, x: str) -> int:
    return ch.integer(1, 3) if len(b.shapes[x]) == 3 else ch.integer(2, 8)


def block_linear_act(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """``act(linear(x))``; a strided or unpadded conv sometimes (when the image allows)."""
    shape = b.shapes[x]
    if len(shape) == 3 and min(shape[1:]) >= 4 and ch.integer(0, 2) == 0:
        y = b.conv(x, ch.integer(1, 3), k=ch.pick((2, 3)), stride=2, padding=ch.integer(0, 1))
    else:
        y = _linear(b, ch, x, _width(b, ch, x))
    return _activation(b, ch, y)


def block_activation(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    return _activation(b, ch, x)


def _body(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """A residual body of ``x``'s shape: linear -> act -> linear, or a nested residual block
    (its own body linear -> act -> residual -> linear)."""
    shape = b.shapes[x]
    width = shape[0]
    h = _activation(b, ch, _linear(b, ch, x, _width(b, ch, x)))
    if depth > 0 and ch.integer(0, 2) == 0:
        h = block_residual(b, ch, h, depth - 1)
    return b.same_shape(_linear(b, ch, h, width), x)


def block_residual(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """``x + body(x)`` (or ``x - body(x)``, or ``body(x) + x``), sometimes followed by an
    activation (the ResNet block)."""
    body = _body(b, ch, x, depth)
    ops = ["add", "sub"] if has("sub") else ["add"]
    op = ch.pick(ops)
    inputs = [x, body] if ch.integer(0, 1) else [body, x]
    params = {}
    if op == "add" and ch.integer(0, 2) == 0:
        inputs.append(_body(b, ch, x, 0))  # two bodies and the skip in one sum
    if ch.integer(0, 2) == 0:
        shape = b.shapes[x]
        per = (shape[0], *([1] * (len(shape) - 1))) if ch.integer(0, 1) else shape
        params["constant"] = b.randn(*per, scale=0.3)
    y = b.node(op, inputs, params)
    return _activation(b, ch, y) if ch.integer(0, 1) else y


def block_concat(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """Two or three branches of ``x`` (one may be ``x`` itself) concatenated on axis 0."""
    branches = [block_linear_act(b, ch, x, depth) for _ in range(ch.integer(1, 2))]
    if ch.integer(0, 1):
        branches.append(x)
    else:
        branches.append(b.same_shape(block_linear_act(b, ch, x, depth), branches[0]))
    # the branches must agree off axis 0: a strided branch is mapped to the first's shape
    branches = [branches[0]] + [_match_rest(b, t, branches[0]) for t in branches[1:]]
    return b.node("concat", branches, attrs={"axis": 0})


def _match_rest(b: GraphBuilder, t: str, like: str) -> str:
    """``t`` mapped so that its shape agrees with ``like``'s off axis 0."""
    if b.shapes[t][1:] == b.shapes[like][1:]:
        return t
    return b.same_shape(t, like)


def block_slices(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """``x`` cut in two along one axis; each part goes through its own branch; the parts are
    concatenated (or added, after mapping to one shape)."""
    shape = b.shapes[x]
    axes = [a for a, s in enumerate(shape) if s >= 2]
    if not axes:
        return block_linear_act(b, ch, x, depth)
    axis = ch.pick(axes)
    cut = ch.integer(1, shape[axis] - 1)
    step = 1
    if ch.integer(0, 3) == 0 and shape[axis] >= 3:
        step = 2
    first = b.node(
        "slice", [x], attrs={"starts": (0,), "ends": (cut,), "steps": (step,), "axes": (axis,)}
    )
    if ch.integer(0, 3) == 0:  # the same entries backwards: a negative step
        stop = -shape[axis] - 1  # ONNX: before the first entry
        attrs = {"starts": (cut - 1,), "ends": (stop,), "steps": (-1,), "axes": (axis,)}
        first = b.node("slice", [x], attrs=attrs)
    second = b.node(
        "slice",
        [x],
        attrs={"starts": (cut,), "ends": (shape[axis],), "steps": (1,), "axes": (axis,)},
    )
    left = block_linear_act(b, ch, first, depth)
    right = _activation(b, ch, second) if ch.integer(0, 1) else second
    if has("concat") and ch.integer(0, 2):
        left, right = b.flat(left), b.flat(right)
        return b.node("concat", [left, right], attrs={"axis": 0})
    return b.node("add", [left, b.same_shape(right, left)])


def block_pool(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    shape = b.shapes[x]
    if len(shape) != 3 or min(shape[1:]) < 2:
        return _activation(b, ch, x)
    op = ch.pick(("avgpool2d", "maxpool2d"))
    k = 2
    stride = ch.pick((1, 2))
    attrs: dict[str, Any] = {"kernel_size": (k, k), "stride": (stride, stride), "padding": (0, 0)}
    return b.node(op, [x], attrs=attrs)


def block_scale(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """A per-channel (image) or per-feature affine map: ``scale`` (batch norm), else
    ``normalize``."""
    shape = b.shapes[x]
    per = (shape[0], *([1] * (len(shape) - 1)))
    factor = b.randn(*per).abs() + 0.2  # nonzero, mixed magnitudes
    factor = factor * torch.where(b.randn(*per) < -0.5, -1.0, 1.0)
    if has("scale") and ch.integer(0, 1):
        params = {"scale": factor, "shift": b.randn(*per, scale=0.3)}
        return b.node("scale", [x], params)
    return b.node("normalize", [x], {"mean": b.randn(*per, scale=0.3), "std": factor})


def block_transpose(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """Swap the two spatial axes of an image (or the two axes of a 2-D view of a flat
    tensor, flattened again)."""
    shape = b.shapes[x]
    if len(shape) == 3:
        return b.node("transpose", [x], attrs={"perm": ch.pick(((0, 2, 1), (1, 0, 2), (2, 1, 0)))})
    n = shape[0]
    rows = next((r for r in (2, 3) if n % r == 0 and n > r), None)
    if rows is None:
        return x
    y = b.node("reshape", [x], attrs={"shape": (rows, n // rows)})
    y = b.node("transpose", [y], attrs={"perm": (1, 0)})
    return b.node("flatten", [y])


def block_reshape(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """Reinterpret the data in another shape (an image keeps three axes)."""
    shape = b.shapes[x]
    if len(shape) == 3:
        c, h, w = shape
        return b.node("reshape", [x], attrs={"shape": ch.pick(((c, w, h), (h, c, w)))})
    return b.node("flatten", [b.node("reshape", [x], attrs={"shape": (1, shape[0])})])


def block_pad(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    shape = b.shapes[x]
    pads = tuple(
        (0, 0) if (len(shape) == 3 and a == 0) else (ch.integer(0, 1), ch.integer(0, 1))
        for a in range(len(shape))
    )
    value = ch.pick((0.0, 0.5))
    return b.node("pad", [x], attrs={"pads": pads, "value": value})


def block_crop(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """Negative pads (ONNX crops) on one side of an axis longer than 2."""
    shape = b.shapes[x]
    axes = [a for a, s in enumerate(shape) if s > 2 and not (len(shape) == 3 and a == 0)]
    if not axes:
        return x
    axis = ch.pick(axes)
    pads = tuple((0, -1) if a == axis else (0, 0) for a in range(len(shape)))
    return b.node("pad", [x], attrs={"pads": pads, "value": 0.0})


def block_gather(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """Entries picked along one axis by constant indices (repeats and negative ones too)."""
    shape = b.shapes[x]
    axis = ch.integer(0, len(shape) - 1)
    n = shape[axis]
    indices = tuple(ch.integer(-n, n - 1) for _ in range(ch.integer(1, 3)))
    return b.node("gather", [x], attrs={"axis": axis, "indices": indices})


def block_squeeze_excite(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """``x + reduce(x)``: a reduction over the spatial axes (image) or all features (flat),
    kept as size-1 axes and broadcast back in the add."""
    shape = b.shapes[x]
    axes = (1, 2) if len(shape) == 3 else (0,)
    op = ch.pick(("reduce_sum", "reduce_mean"))
    r = b.node(op, [_activation(b, ch, x)], attrs={"axes": axes, "keepdims": True})
    return b.node("add", [x, r] if ch.integer(0, 1) else [r, x])


def block_upsample(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """A nearest-neighbour upsampling or a transposed conv (on images of at most 4x4)."""
    shape = b.shapes[x]
    if len(shape) != 3 or max(shape[1:]) > 4:
        return _activation(b, ch, x)
    names = [n for n in ("resize_nearest", "conv_transpose2d") if has(n)]
    if ch.pick(names) == "resize_nearest":
        return b.node("resize_nearest", [x], attrs={"scales": ch.pick(((1, 2), (2, 1), (2, 2)))})
    c_in, c_out, k, stride = shape[0], ch.integer(1, 3), ch.pick((2, 3)), ch.pick((1, 2))
    params = {
        "weight": b.randn(c_in, c_out, k, k, scale=b.weight_scale / math.sqrt(c_in * k)),
        "bias": b.randn(c_out, scale=b.bias_scale),
    }
    attrs = {
        "stride": (stride, stride),
        "padding": (k // 2, k // 2),
        "output_padding": (0, 0),
        "dilation": (1, 1),
        "groups": 1,
    }
    return b.node("conv_transpose2d", [x], params, attrs)


def block_mul(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """``act(linear(x)) * linear(x)``: a product of two computed tensors (a gate)."""
    width = _width(b, ch, x)
    gate = _activation(b, ch, _linear(b, ch, x, width))
    value = _linear(b, ch, x, width)
    return b.node("mul", [gate, value] if ch.integer(0, 1) else [value, gate])


def block_div(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """``linear(x) / (sigmoid(linear(x)) + 0.5)``: a quotient of computed tensors whose
    denominator stays in ``[0.5, 1.5]``."""
    width = _width(b, ch, x)
    num = _linear(b, ch, x, width)
    den = b.act(_linear(b, ch, x, width), "sigmoid") if has("sigmoid") else None
    if den is None:
        return num
    shape = b.shapes[den]
    den = b.node("scale", [den], {"shift": torch.full(shape, 0.5, dtype=torch.float64)})
    return b.node("div", [num, den])


def block_matmul(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    """``reshape(linear(x), (m, k)) @ reshape(linear(x), (k, n))``, flattened."""
    m, k, n = ch.integer(1, 3), ch.integer(1, 3), ch.integer(1, 3)
    left = b.node("reshape", [b.dense(x, m * k)], attrs={"shape": (m, k)})
    right = b.node("reshape", [b.dense(x, k * n)], attrs={"shape": (k, n)})
    pair = [left, right]
    if ch.integer(0, 1):  # a tanh on one factor: products of two non-linear tensors
        pair[1] = b.act(right, "tanh") if has("tanh") else right
    return b.node("flatten", [b.node("matmul", pair)])


def block_softmax(b: GraphBuilder, ch: Chooser, x: str, depth: int) -> str:
    shape = b.shapes[x]
    axis = ch.integer(0, len(shape) - 1)
    return b.node("softmax", [_linear(b, ch, x, _width(b, ch, x))], attrs={"axis": axis})


# name -> (block, operators it needs, input kinds: "image" / "flat")
BLOCKS: dict[str, tuple[Block, tuple[str, ...], tuple[str, ...]]] = {
    "linear_act": (block_linear_act, (), ("image", "flat")),
    "activation": (block_activation, (), ("image", "flat")),
    "pool": (block_pool, (), ("image",)),
    "scale": (block_scale, (), ("image", "flat")),
    "reshape": (block_reshape, (), ("image", "flat")),
    "residual": (block_residual, ("add",), ("image", "flat")),
    "concat": (block_concat, ("concat",), ("image", "flat")),
    "slices": (block_slices, ("slice", "add"), ("image", "flat")),
    "transpose": (block_transpose, ("transpose",), ("image", "flat")),
    "pad": (block_pad, ("pad",), ("image", "flat")),
    "crop": (block_crop, ("pad",), ("image", "flat")),
    "gather": (block_gather, ("gather",), ("image", "flat")),
    "squeeze_excite": (
        block_squeeze_excite,
        ("add", "reduce_sum", "reduce_mean"),
        ("image", "flat"),
    ),
    "upsample": (block_upsample, ("resize_nearest",), ("image",)),
    "mul": (block_mul, ("mul",), ("image", "flat")),
    "div": (block_div, ("div", "scale"), ("image", "flat")),
    "matmul": (block_matmul, ("matmul",), ("flat",)),
    "softmax": (block_softmax, ("softmax",), ("flat",)),
}


def available_blocks(kind: str) -> tuple[str, ...]:
    """Blocks whose operators are all registered now, for an ``image`` or ``flat`` tensor."""
    return tuple(name for name, (_, ops, kinds) in BLOCKS.items() if kind in kinds and has(*ops))


def random_graph(
    ch: Chooser,
    input_shape: Shape,
    n_out: int,
    *,
    seed: int,
    blocks: int = 3,
    nesting: int = 1,
    weight_scale: float = 1.0,
    only: Sequence[str] | None = None,
    acts: Sequence[str] = (),
) -> Graph:
    """A random graph on ``input_shape`` (flat or ``(C, H, W)``) with ``n_out`` outputs.

    Up to ``blocks`` random blocks on the image, a flatten, up to ``blocks`` on the flat
    tensor, then a dense output layer. ``only`` restricts the blocks drawn (names of
    :data:`BLOCKS`), ``acts`` the activations (default: :func:`activations`); ``nesting``
    bounds how deep residual blocks nest. Float64 weights.
    """
    gen = torch.Generator().manual_seed(int(seed))
    b = GraphBuilder(tuple(input_shape), gen, weight_scale, activations=tuple(acts))
    x = b.input_name
    for kind in ("image", "flat") if len(input_shape) == 3 else ("flat",):
        names = [n for n in available_blocks(kind) if only is None or n in only]
        for _ in range(ch.integer(0 if kind == "image" else 1, blocks)):
            block = BLOCKS[ch.pick(names)][0] if names else block_linear_act
            x = block(b, ch, x, nesting)
            if kind == "image" and len(b.shapes[x]) != 3:
                break
        x = b.flat(x)
    return b.graph(b.dense(x, n_out), "random-graph")


def conv_graph(
    ch: Chooser,
    input_shape: Shape,
    n_out: int,
    *,
    seed: int,
    layers: int = 4,
    weight_scale: float = 1.0,
    acts: Sequence[str] = ("relu",),
) -> Graph:
    """A random CNN with residual blocks on ``input_shape`` ``(C, H, W)``: convolutions of
    every geometry (kernel 1-4 per axis, stride 1-2, padding 0-2, dilation 1-2, groups),
    batch-norm ``scale`` s (per channel, or per entry), convolutions in a row, residual
    ``add`` / ``sub`` of a conv-act-conv body, activations from ``acts``; then flatten and a
    dense output. The
    image never shrinks below 3x3. Float64 weights."""
    gen = torch.Generator().manual_seed(int(seed))
    b = GraphBuilder(tuple(input_shape), gen, weight_scale, activations=tuple(acts))

    def conv(x: str, c_out: int, same: bool = False) -> str:
        c_in, h, w = b.shapes[x]
        groups = ch.pick([g for g in (1, 2, 3) if c_in % g == 0 and c_out % g == 0])
        kernel = (1, 1) if same and ch.integer(0, 1) else (ch.integer(1, 4), ch.integer(1, 4))
        dil = (ch.integer(1, 2), ch.integer(1, 2))
        stride = (1, 1) if same else (ch.integer(1, 2), ch.integer(1, 2))
        pad = [ch.integer(0, 2) for _ in range(2)]
        for ax, size in enumerate((h, w)):
            reach = dil[ax] * (kernel[ax] - 1)
            if same:  # an odd reach keeps the size with padding reach / 2
                kernel = (1, kernel[1]) if ax == 0 and reach % 2 else kernel
                kernel = (kernel[0], 1) if ax == 1 and reach % 2 else kernel
                pad[ax] = dil[ax] * (kernel[ax] - 1) // 2
            elif (size + 2 * pad[ax] - reach - 1) // stride[ax] + 1 < 3:
                kernel = (1, kernel[1]) if ax == 0 else (kernel[0], 1)
                stride = (1, stride[1]) if ax == 0 else (stride[0], 1)
                pad[ax] = 0
        s = b.weight_scale / math.sqrt(c_in // groups * kernel[0] * kernel[1])
        params = {
            "weight": b.randn(c_out, c_in // groups, *kernel, scale=s),
            "bias": b.randn(c_out, scale=b.bias_scale),
        }
        attrs = {"stride": stride, "padding": tuple(pad), "dilation": dil, "groups": groups}
        return b.node("conv2d", [x], params, attrs)

    def bn(x: str) -> str:
        shape = b.shapes[x]
        per = (shape[0], 1, 1) if ch.integer(0, 2) else shape
        params = {"scale": b.randn(*per).abs() + 0.2, "shift": b.randn(*per, scale=0.3)}
        return b.node("scale", [x], params)

    x = b.input_name
    for _ in range(layers):
        width = ch.integer(1, 3) * ch.pick((1, 2))
        if ch.integer(0, 2) == 0 and b.shapes[x][0] > 1:  # a residual block
            body = _activation(b, ch, bn(conv(x, width, same=True)))
            body = conv(body, b.shapes[x][0], same=True)
            op = ch.pick(("add", "sub")) if has("sub") else "add"
            x = b.node(op, [x, bn(body)] if ch.integer(0, 1) else [bn(body), x])
        else:
            x = conv(x, width)
            if ch.integer(0, 1):
                x = bn(x)
            if ch.integer(0, 2) == 0:  # two linear maps in a row: conv (-bn) -conv
                x = conv(x, width, same=bool(ch.integer(0, 1)))
        x = _activation(b, ch, x)
    return b.graph(b.dense(b.flat(x), n_out), "random-cnn")


# -- named architectures for the benchmark -------------------------------------------------
def resnet_graph(
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks_per_stage: int | Sequence[int] = 2,
    *,
    input_shape: Shape = (3, 32, 32),
    classes: int = 10,
    seed: int = 0,
    stem_stride: int = 1,
) -> Graph:
    """A CIFAR ResNet of basic blocks as a graph: conv-bn-relu stem, stages of
    ``conv-bn-relu-conv-bn (+ shortcut) -> relu`` blocks (the first block of each later stage
    strides 2 with a 1x1 conv-bn shortcut), global average pool, dense. Batch norm is a
    ``scale`` node when registered, else ``normalize``. Random He-normal weights; the
    residual branch's last scale is 0.3 so that depth does not blow activations up."""
    b = GraphBuilder(
        tuple(input_shape), torch.Generator().manual_seed(int(seed)), math.sqrt(2.0), 0.05
    )
    counts = (
        [blocks_per_stage] * len(widths)
        if isinstance(blocks_per_stage, int)
        else list(blocks_per_stage)
    )

    def bn(x: str, gain: float = 1.0) -> str:
        c = b.shapes[x][0]
        factor = (1.0 + 0.1 * b.randn(c, 1, 1)) * gain
        shift = b.randn(c, 1, 1, scale=0.05)
        if has("scale"):
            return b.node("scale", [x], {"scale": factor, "shift": shift})
        return b.node("normalize", [x], {"mean": -shift / factor, "std": 1.0 / factor})

    x = b.act(bn(b.conv(b.input_name, widths[0], 3, stem_stride)), "relu")
    for stage, (width, count) in enumerate(zip(widths, counts, strict=True)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            h = b.act(bn(b.conv(x, width, 3, stride)), "relu")
            h = bn(b.conv(h, width, 3, 1), gain=0.3)
            short = x
            if stride != 1 or b.shapes[x][0] != width:
                short = bn(b.conv(x, width, 1, stride, padding=0))
            x = b.act(b.node("add", [short, h]), "relu")
    _, h, w = b.shapes[x]
    x = b.node("avgpool2d", [x], attrs={"kernel_size": (h, w), "stride": (h, w), "padding": (0, 0)})
    return b.graph(b.dense(x, classes, scale=1.0), "cifar-resnet")


__all__ = [
    "BLOCKS",
    "Chooser",
    "GraphBuilder",
    "RandomChooser",
    "activations",
    "available_blocks",
    "conv_graph",
    "has",
    "piecewise_linear",
    "random_graph",
    "resnet_graph",
]
