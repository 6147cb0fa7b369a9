"""The graph IR: operator nodes over named tensors, one (packed) input and one output.

A :class:`Graph` is a list of :class:`Node` records in topological order. Each node applies
one registered operator (:mod:`nnbound.ops`) to one or more named tensors (the graph input or
earlier nodes' outputs) and writes one named tensor; a tensor may feed any number of nodes
(residual connections, branches). Weights and other constants live in the node's ``params``.

A graph has exactly one input tensor and one output tensor, like :class:`Network`, so input
sets (Lp balls, boxes), specs and every task see the same interface. Importers pack a model
with several inputs into one flat input (the VNN-LIB convention: ``X_0 ..`` run over the
inputs in order) followed by ``slice`` + ``reshape`` nodes; coordinates the input set fixes
(``lower == upper``) are constants to every bound method. Several outputs are packed the same
way (flattened, concatenated).

An operator with several outputs (ONNX ``Split``) is written as one node per output (a
``slice`` each): every node has one output, which keeps the backward engine's bookkeeping to
one coefficient per tensor.

Shapes never include the batch axis. Construction infers every tensor's shape with the
operators' ``out_shape`` and checks parameters are finite float tensors on one device, so a
graph that exists is one the bound code can trust.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nnbound.errors import InputError

if TYPE_CHECKING:
    from nnbound.network.layers import Activation

Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Node:
    """One operator application.

    Attributes:
        op: the registry name of the operator (``"dense"``, ``"add"``, ``"relu"``, ...).
        inputs: names of the tensors it reads, in the operator's argument order.
        output: name of the tensor it writes (unique in the graph).
        params: constant tensors (weights, biases, constant operands).
        attrs: everything else the operator needs (ints, floats, tuples, strings).
        label: where the node came from, for error messages (e.g. the ONNX node name).
    """

    op: str
    inputs: tuple[str, ...]
    output: str
    params: Mapping[str, Tensor] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "attrs", dict(self.attrs))

    @property
    def where(self) -> str:
        """``op 'label'`` for error messages."""
        return f"{self.op} node {self.label or self.output!r}"


@dataclass(frozen=True, eq=False)
class Graph:
    """A computation graph with one input tensor and one output tensor.

    Attributes:
        nodes: operator nodes in topological order (every input is the graph input or an
            earlier node's output).
        input_shape: shape of one input sample, without the batch axis.
        output: name of the output tensor.
        input_name: name of the input tensor.
        input_range: the data domain ``(low, high)`` of every input feature, or ``None``.
        name: a short human name.
        meta: free-form provenance, strings only.
    """

    nodes: tuple[Node, ...]
    input_shape: Shape
    output: str
    input_name: str = "input"
    input_range: tuple[float, float] | None = None
    name: str = "graph"
    meta: Mapping[str, str] = field(default_factory=dict)
    # The dtype of a network without any tensor (only activations, flatten, pooling): it has
    # no weights to carry one, so ``to(dtype=...)`` records it here.
    empty_dtype: torch.dtype | None = field(default=None, compare=False, repr=False)
    shapes: Mapping[str, Shape] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from nnbound.ops.registry import get_op

        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "meta", dict(self.meta))
        if not self.nodes:
            raise InputError("a graph needs at least one node")
        if self.input_range is not None:
            lo, hi = (float(v) for v in self.input_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise InputError(
                    f"input_range must be finite with low < high, got {self.input_range}"
                )
            object.__setattr__(self, "input_range", (lo, hi))
        shapes: dict[str, Shape] = {self.input_name: self.input_shape}
        ref: Tensor | None = None
        for node in self.nodes:
            spec = get_op(node.op, node)
            for name in node.inputs:
                if name not in shapes:
                    raise InputError(
                        f"{node.where} reads {name!r}, which is neither the graph input nor "
                        "an earlier node's output"
                    )
            if node.output in shapes:
                raise InputError(f"{node.where} writes {node.output!r}, which already exists")
            for key, t in node.params.items():
                if not isinstance(t, Tensor) or not torch.is_floating_point(t):
                    raise InputError(f"{node.where}: parameter {key} is not a float tensor")
                if not bool(torch.isfinite(t).all()):
                    raise InputError(f"{node.where}: parameter {key} contains NaN or inf values")
                if ref is None:
                    ref = t
                elif t.dtype != ref.dtype or t.device != ref.device:
                    raise InputError(
                        f"{node.where}: parameter {key} is {t.dtype} on {t.device}, but earlier "
                        f"tensors are {ref.dtype} on {ref.device}; use Graph.to()"
                    )
            try:
                out = spec.out_shape(node, [shapes[i] for i in node.inputs])
            except InputError as exc:
                raise InputError(f"{node.where}: {exc}") from None
            shapes[node.output] = tuple(int(s) for s in out)
        if self.output not in shapes:
            raise InputError(f"graph output {self.output!r} is not produced by any node")
        object.__setattr__(self, "shapes", shapes)

    # -- structure ------------------------------------------------------------------------
    @property
    def output_shape(self) -> Shape:
        return self.shapes[self.output]

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_shape)

    @property
    def num_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for node in self.nodes for t in node.params.values())

    @property
    def dtype(self) -> torch.dtype:
        for node in self.nodes:
            for t in node.params.values():
                return t.dtype
        return self.empty_dtype or torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for node in self.nodes:
            for t in node.params.values():
                return t.device
        return torch.device("cpu")

    @property
    def widest(self) -> int:
        """Entries of the largest tensor (the input included): what sizes passes and chunks."""
        return max(math.prod(s) for s in self.shapes.values())

    @property
    def producers(self) -> dict[str, Node]:
        """The node writing each tensor (the graph input has none)."""
        return {node.output: node for node in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        """The nodes reading each tensor."""
        out: dict[str, list[Node]] = {name: [] for name in self.shapes}
        for node in self.nodes:
            for name in dict.fromkeys(node.inputs):
                out[name].append(node)
        return out

    def ancestors(self, tensor: str) -> list[Node]:
        """The nodes ``tensor`` depends on, in topological order (``tensor``'s own producer
        last)."""
        producers = self.producers
        needed: set[str] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            if name in needed or name not in producers:
                continue
            needed.add(name)
            stack.extend(producers[name].inputs)
        return [node for node in self.nodes if node.output in needed]

    @property
    def activations(self) -> list[Activation]:
        """The element-wise activations, as chain :class:`Activation` records."""
        from nnbound.network.layers import Activation
        from nnbound.ops.activation import ActivationOp
        from nnbound.ops.registry import get_op

        out = []
        for node in self.nodes:
            op = get_op(node.op, node)
            if isinstance(op, ActivationOp):
                out.append(Activation(node.op, op.alpha(node)))
        return out

    @property
    def is_mlp(self) -> bool:
        """True if every node is dense, reshaping, normalising or element-wise, in a chain."""
        from nnbound.ops.base import OpKind
        from nnbound.ops.registry import get_op

        plain = ("dense", "flatten", "reshape", "normalize")
        return self.is_chain and all(
            n.op in plain or get_op(n.op, n).kind is OpKind.ELEMENTWISE for n in self.nodes
        )

    @property
    def is_chain(self) -> bool:
        """True if every node reads only the previous node's output (or the input)."""
        prev = self.input_name
        for node in self.nodes:
            if node.inputs != (prev,):
                return False
            prev = node.output
        return prev == self.output

    # -- conversions ----------------------------------------------------------------------
    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Graph:
        """A copy with every parameter moved to ``device`` / cast to ``dtype``."""
        nodes = tuple(
            replace(
                node, params={k: t.to(device=device, dtype=dtype) for k, t in node.params.items()}
            )
            for node in self.nodes
        )
        return replace(self, nodes=nodes, empty_dtype=dtype or self.empty_dtype)

    def with_meta(self, **meta: str) -> Graph:
        return replace(self, meta={**self.meta, **{k: str(v) for k, v in meta.items()}})

    # -- evaluation -----------------------------------------------------------------------
    def check_input(self, x: Tensor) -> Tensor:
        """``x`` as a batch ``(B, *input_shape)`` (see :meth:`Network.check_input`)."""
        from nnbound.network.network import coerce_input

        return coerce_input(x, self.input_shape, self.dtype, self.device)

    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        """Every tensor's value for a batch ``x`` of shape ``(B, *input_shape)``."""
        from nnbound.ops.registry import get_op

        values = {self.input_name: x}
        for node in self.nodes:
            values[node.output] = get_op(node.op, node).forward(
                node, *(values[i] for i in node.inputs)
            )
        return values

    def forward(self, x: Tensor) -> Tensor:
        """The output of a batch ``x`` of shape ``(B, *input_shape)`` (differentiable).

        Unlike :meth:`evaluate`, each tensor is dropped after its last consumer has run, so
        the memory held is the live set (a U-Net's skip tensors), not every tensor at once.
        """
        from nnbound.ops.registry import get_op

        last_use = {name: k for k, node in enumerate(self.nodes) for name in node.inputs}
        values = {self.input_name: x}
        for k, node in enumerate(self.nodes):
            values[node.output] = get_op(node.op, node).forward(
                node, *(values[i] for i in node.inputs)
            )
            for name in set(node.inputs):
                if last_use[name] == k and name != self.output:
                    del values[name]
        return values[self.output]

    __call__ = forward

    def describe(self) -> list[tuple[str, Shape, int]]:
        """(node description, output shape, parameter count) per node."""
        from nnbound.ops.registry import get_op

        rows = []
        for node in self.nodes:
            text = get_op(node.op, node).summary(node)
            srcs = ", ".join(node.inputs)
            rows.append(
                (
                    f"{node.output} = {text}({srcs})",
                    self.shapes[node.output],
                    sum(t.numel() for t in node.params.values()),
                )
            )
        return rows


__all__ = ["Graph", "Node", "Shape"]
