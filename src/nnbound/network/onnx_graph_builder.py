"""The state of an ONNX -> graph import: ONNX values as graph tensors, and how nodes are made.

ONNX tensors carry a batch axis; graph tensors do not. An ONNX value computed from the input
is a :class:`Value`: the graph tensor holding its data, that tensor's per-sample shape
(``actual``), the ONNX shape at batch size 1 (``onnx``) and whether ONNX axis 0 is the batch
axis (``batched``). At batch size 1 the ONNX tensor *is* one sample, so any shape with the
same number of elements views the same data in the same (C) order; reshape-like ONNX nodes
therefore only change ``onnx`` and a ``reshape`` node is written lazily, when an operator
needs a particular view (:meth:`GraphBuilder.view`).

Axes: for a batched value, ONNX axis ``k >= 1`` is per-sample axis ``k - 1`` of the
*canonical* view (``onnx[1:]``). An operator that touches ONNX axis 0 of a batched value
(concatenating along it, gathering from it, transposing it away) runs on the *full* view
(the ONNX shape itself, batch axis included as a size-1 axis) and its result is unbatched:
exact at batch size 1, which is the only batch size the graph represents per sample.

Constants (initializers, ``Constant`` nodes, anything computed from constants alone) stay
numpy arrays until a node needs them as float parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import torch

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.graph import Node, Shape

KIND_REAL, KIND_INT, KIND_BOOL = "real", "int", "bool"
"""What a value holds: any real, integers only, or only 0 and 1 (needed to cast exactly)."""


@dataclass(frozen=True)
class Value:
    """An ONNX tensor computed from the graph input (see the module docstring).

    Attributes:
        tensor: the graph tensor holding its data.
        actual: that tensor's per-sample shape (same number of elements as ``onnx``).
        onnx: the ONNX shape at batch size 1.
        batched: ONNX axis 0 is the batch axis.
        kind: :data:`KIND_REAL`, :data:`KIND_INT` or :data:`KIND_BOOL`.
    """

    tensor: str
    actual: Shape
    onnx: Shape
    batched: bool
    kind: str = KIND_REAL

    @property
    def sample(self) -> Shape:
        """The canonical per-sample shape: the ONNX shape without the batch axis."""
        return self.onnx[1:] if self.batched else self.onnx

    def reshaped(self, onnx_shape: Sequence[int], kind: str | None = None) -> Value:
        """The same data under another ONNX shape (a reshape-like node): still batched if
        the new shape keeps a leading size-1 axis."""
        shape = tuple(int(d) for d in onnx_shape)
        if math.prod(shape) != math.prod(self.onnx):
            raise InputError(f"cannot view {self.onnx} as {shape}")
        batched = self.batched and len(shape) >= 1 and shape[0] == 1
        return replace(self, onnx=shape, batched=batched, kind=kind or self.kind)


Operand = Value | np.ndarray


def node_label(node: onnx.NodeProto, index: int) -> str:
    """``node 'name'`` (or ``node #i -> 'output'``) for messages, as the chain importer."""
    if node.name:
        return f"node {node.name!r}"
    out = node.output[0] if node.output else "?"
    return f"node #{index} -> {out!r}"


def onnx_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def as_param(arr: np.ndarray) -> torch.Tensor:
    """A float64 copy of ``arr`` (the graph is cast to its final dtype at the end)."""
    return torch.from_numpy(np.array(arr, dtype=np.float64, order="C"))


def pad_rank(shape: Sequence[int], rank: int) -> Shape:
    """``shape`` with leading size-1 axes up to ``rank`` (numpy broadcasting alignment)."""
    return (1,) * (rank - len(shape)) + tuple(int(d) for d in shape)


def order_preserving(shape: Sequence[int], perm: Sequence[int]) -> bool:
    """True if transposing ``shape`` by ``perm`` keeps the data order (only size-1 axes
    move), so the transpose is a reshape."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


class GraphBuilder:
    """Collects graph nodes while walking an ONNX graph.

    Attributes:
        where: the model's file name (or "ONNX model") for messages.
        consts: ONNX name -> constant array.
        values: ONNX name -> computed :class:`Value`.
        nodes: graph nodes so far, in topological order.
        shapes: graph tensor -> per-sample shape.
        uses: ONNX name -> number of ONNX nodes (and graph outputs) reading it.
        float_dtypes: float dtypes of the model's constants and inputs (decides the graph's).
    """

    def __init__(self, where: str, opsets: Sequence[onnx.OperatorSetIdProto]) -> None:
        self.where = where
        self.opsets = list(opsets)
        self.consts: dict[str, np.ndarray] = {}
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.shapes: dict[str, Shape] = {}
        self.uses: dict[str, int] = {}
        self.float_dtypes: set[np.dtype] = set()
        self._taken: set[str] = set()
        self._views: dict[tuple[str, Shape], str] = {}
        self._start = 0
        self._held: set[str] = set()  # graph tensors some ONNX value holds
        # ONNX value name -> index of the dense / conv node writing its tensor, for folding a
        # following constant affine map (BatchNormalization, bias Add) into that node
        self._linear: dict[str, int] = {}

    @property
    def opset(self) -> int:
        for op in self.opsets:
            if op.domain in ("", "ai.onnx"):
                return int(op.version)
        return 1

    # -- names ----------------------------------------------------------------------------
    def reserve(self, names: Sequence[str]) -> None:
        """Keep ``names`` (every ONNX tensor name) from being handed out by :meth:`fresh`."""
        self._taken.update(names)

    def fresh(self, base: str) -> str:
        """A tensor name not used by the ONNX model nor by an earlier node."""
        name = base
        k = 1
        while name in self._taken:
            name = f"{base}#{k}"
            k += 1
        self._taken.add(name)
        return name

    # -- constants ------------------------------------------------------------------------
    def add_const(self, name: str, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        self.consts[name] = arr
        if arr.dtype.kind == "f":
            self.float_dtypes.add(arr.dtype)

    def is_const(self, name: str) -> bool:
        return name in self.consts

    # -- reading a node's inputs ----------------------------------------------------------
    def operand(self, node: onnx.NodeProto, i: int, label: str) -> Operand | None:
        """Input ``i`` of ``node``: a Value, a constant, or None when omitted."""
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name in self.consts:
            return self.consts[name]
        if name in self.values:
            return self.values[name]
        raise ModelFormatError(
            f"{self.where}: ONNX {node.op_type} {label} reads undefined tensor {name!r} "
            "(truncated, unsorted or invalid graph)"
        )

    def const(self, node: onnx.NodeProto, i: int, label: str, what: str) -> np.ndarray | None:
        """Input ``i`` as a constant (None when omitted); refuses a computed tensor."""
        x = self.operand(node, i, label)
        if isinstance(x, Value):
            raise self.unsupported(
                node, label, f"its {what} ({node.input[i]!r}) must be a constant, not computed"
            )
        return x

    def computed(self, node: onnx.NodeProto, i: int, label: str) -> Value:
        """Input ``i`` as a computed Value (refuses a missing input)."""
        x = self.operand(node, i, label)
        if not isinstance(x, Value):
            raise self.bad(node, label, f"input {i} must be computed from the network input")
        return x

    def begin(self) -> None:
        """A converter starts: nodes from here on are its own (see :meth:`set`)."""
        self._start = len(self.nodes)

    def set(self, node: onnx.NodeProto, value: Value, k: int = 0) -> None:
        """Register ``value`` as output ``k`` of ``node``. A tensor the converter just wrote
        for it, and that nothing reads yet, takes the ONNX output's name."""
        name = node.output[k]
        own = self.nodes[self._start :]
        producer = [i for i, n in enumerate(own) if n.output == value.tensor]
        if (
            producer
            and name not in self.shapes
            and not any(value.tensor in n.inputs for n in own)
            and value.tensor not in self._held
        ):
            i = self._start + producer[0]
            self.nodes[i] = replace(self.nodes[i], output=name)
            self.shapes[name] = self.shapes.pop(value.tensor)
            value = replace(value, tensor=name)
        self.hold(name, value)

    def hold(self, name: str, value: Value) -> None:
        """Register ``value`` as the ONNX tensor ``name``."""
        self.values[name] = value
        self._held.add(value.tensor)

    # -- errors ---------------------------------------------------------------------------
    def unsupported(self, node: onnx.NodeProto, label: str, why: str) -> UnsupportedError:
        return UnsupportedError(f"unsupported ONNX op {node.op_type!r} ({label}): {why}")

    def bad(self, node: onnx.NodeProto, label: str, why: str) -> ModelFormatError:
        return ModelFormatError(f"{self.where}: ONNX {node.op_type} {label}: {why}")

    # -- nodes ----------------------------------------------------------------------------
    def emit(
        self,
        op: str,
        inputs: Sequence[str],
        onnx_node: onnx.NodeProto | None,
        label: str,
        *,
        params: dict[str, np.ndarray] | None = None,
        attrs: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> tuple[str, Shape]:
        """Append a graph node ``op`` reading ``inputs``; returns its tensor and shape.

        Raises UnsupportedError naming the ONNX op and node when ``op`` is not registered,
        and ModelFormatError when the operator refuses the shapes.
        """
        from nnbound.ops.registry import OPS

        if op not in OPS and onnx_node is None:
            raise UnsupportedError(
                f"{self.where}: {label} needs the graph operator {op!r}, which is not registered"
            )
        onnx_op = onnx_node.op_type if onnx_node is not None else "graph"
        if op not in OPS:
            raise UnsupportedError(
                f"unsupported ONNX op {onnx_op!r} ({label}): it needs the graph operator "
                f"{op!r}, which is not registered"
            )
        base = hint or (onnx_node.output[0] if onnx_node is not None else op)
        out = self.fresh(base)
        node = Node(
            op,
            tuple(inputs),
            out,
            {k: as_param(v) for k, v in (params or {}).items()},
            dict(attrs or {}),
            (onnx_node.name or onnx_node.output[0]) if onnx_node is not None else "",
        )
        try:
            shape = OPS[op].out_shape(node, [self.shapes[i] for i in inputs])
        except InputError as exc:
            raise ModelFormatError(
                f"{self.where}: ONNX {onnx_op} {label}: {op} refuses its input shapes "
                f"{[self.shapes[i] for i in inputs]} ({exc})"
            ) from None
        shape = tuple(int(s) for s in shape)
        self.nodes.append(node)
        self.shapes[out] = shape
        return out, shape

    def view(self, value: Value, shape: Sequence[int], label: str = "") -> str:
        """The tensor of ``value`` as per-sample ``shape`` (a reshape node when needed)."""
        return self.view_tensor(value.tensor, shape, label)

    def view_tensor(self, tensor: str, shape: Sequence[int], label: str = "") -> str:
        shape = tuple(int(d) for d in shape) or (1,)
        if self.shapes[tensor] == shape:
            return tensor
        key = (tensor, shape)
        if key not in self._views:
            out, _ = self.emit(
                "reshape", [tensor], None, label, attrs={"shape": shape}, hint=f"{tensor}:view"
            )
            self._views[key] = out
        return self._views[key]

    def canonical(self, value: Value, label: str = "") -> str:
        return self.view(value, value.sample, label)

    def full(self, value: Value, label: str = "") -> str:
        return self.view(value, value.onnx, label)

    def axes_view(self, value: Value, axes: Sequence[int], label: str = "") -> tuple[str, bool]:
        """The view on which ONNX ``axes`` (normalised) act, and whether the result stays
        batched: the canonical view (axes shift by one) when no axis is the batch axis, the
        full view otherwise."""
        if value.batched and 0 not in axes:
            return self.canonical(value, label), True
        return self.full(value, label), False

    @staticmethod
    def sample_axes(axes: Sequence[int], batched: bool) -> tuple[int, ...]:
        return tuple(a - 1 for a in axes) if batched else tuple(axes)

    # -- linear nodes and folding ---------------------------------------------------------
    def mark_linear(self, onnx_name: str) -> None:
        """The last node (dense / conv) writes ``onnx_name``'s tensor directly."""
        self._linear[onnx_name] = len(self.nodes) - 1

    def fold_affine(
        self,
        onnx_name: str,
        value: Value,
        scale: np.ndarray | None,
        shift: np.ndarray | None,
        *,
        private: bool = False,
    ) -> bool:
        """Fold ``x * scale + shift`` (constants already in ``value``'s canonical shape)
        into the dense / conv node writing ``value``, when that node's output is read by
        this node only (``private``: by construction, e.g. Gemm's own bias). Returns whether
        it did."""
        idx = self._linear.get(onnx_name)
        if idx is None or (not private and self.uses.get(onnx_name, 0) != 1):
            return False
        node = self.nodes[idx]
        out_shape = self.shapes[node.output]
        ones = np.ones(value.sample, dtype=np.float64)
        s = (ones if scale is None else ones * scale).reshape(out_shape)
        t = (0.0 * ones if shift is None else ones * shift).reshape(out_shape)
        w, b = node.params["weight"].numpy(), node.params["bias"].numpy()
        if node.op == "dense":
            s, t = s.reshape(-1), t.reshape(-1)
            w, b = w * s[:, None], b * s + t
        elif node.op in ("conv2d", "conv_transpose2d"):
            # only per-channel constants live in a convolution's weight and bias
            if not (np.all(s == s[:, :1, :1]) and np.all(t == t[:, :1, :1])):
                return False
            s, t = s[:, 0, 0], t[:, 0, 0]
            if node.op == "conv2d":
                w = w * s[:, None, None, None]
            else:
                # weight (in_c, out_c / groups, kh, kw): entry (i, j) feeds output channel
                # (i // in_per_group) * out_per_group + j
                groups = int(node.attrs.get("groups", 1))
                in_per, out_per = w.shape[0] // groups, w.shape[1]
                channel = (np.arange(w.shape[0]) // in_per)[:, None] * out_per + np.arange(out_per)
                w = w * s[channel][:, :, None, None]
            b = b * s + t
        else:
            return False
        self.nodes[idx] = replace(node, params={"weight": as_param(w), "bias": as_param(b)})
        return True

    def inherit_linear(self, old: str, new: str) -> None:
        """``new`` holds ``old``'s tensor (folded into, or unchanged): it may be folded into
        further when nothing else reads ``old``."""
        if old in self._linear and (old == new or self.uses.get(old, 0) == 1):
            self._linear[new] = self._linear[old]

    def sample_const(self, c: np.ndarray, out_onnx: Shape, batched: bool) -> np.ndarray:
        """A constant operand as a per-sample array broadcasting against a result of ONNX
        shape ``out_onnx`` (leading axes padded, the batch axis dropped when batched)."""
        padded = np.asarray(c, dtype=np.float64).reshape(pad_rank(c.shape, max(len(out_onnx), 1)))
        return padded[0] if batched else padded

    def prune(self, output: str) -> list[Node]:
        """The nodes ``output`` depends on (dead branches dropped), in order."""
        producers = {n.output: n for n in self.nodes}
        needed: set[str] = set()
        stack = [output]
        while stack:
            name = stack.pop()
            if name in needed or name not in producers:
                continue
            needed.add(name)
            stack.extend(producers[name].inputs)
        return [n for n in self.nodes if n.output in needed]


__all__ = [
    "KIND_BOOL",
    "KIND_INT",
    "KIND_REAL",
    "GraphBuilder",
    "Operand",
    "Value",
    "as_param",
    "node_label",
    "onnx_attrs",
    "order_preserving",
    "pad_rank",
]
