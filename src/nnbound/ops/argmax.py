"""Integer-valued selection operators: ``argmax``, ``onehot`` and ``equal`` (ONNX ``ArgMax``,
``OneHot``, ``Equal``), as in segmentation heads that count correctly labelled pixels (the
carvana U-Net: ``Softmax -> ArgMax -> OneHot -> Equal(mask) -> ReduceSum``). Integers and
booleans are floats in the IR (``Cast`` to a float type is the identity; a float to an integer
type is ``trunc``, :mod:`nnbound.ops.step`).

Each has exact ONNX semantics forward, a sound interval rule, and the interval-only backward
rule (slope 0 on every input, the output interval as constants): these functions are piecewise
constant, so a line through a jump would rarely beat the constants.

Nodes:

* ``argmax`` x; attrs ``axis`` (per sample), ``keepdims`` (default true). The index of the
  first maximal entry (ONNX ``select_last_index = 0``, as ``torch.argmax``). Interval: entry
  ``j`` can be the arg max only if ``u_j >= max_k l_k``; the output lies between the smallest
  and the largest such ``j`` (exact when one entry's lower bound beats every other's upper
  bound).
* ``onehot`` indices; attrs ``depth``, ``axis`` (where the new axis of size ``depth`` goes in
  the per-sample output shape), ``values`` ``(off, on)``. Entry ``k`` is ``on`` where the index
  is ``k`` or ``k - depth`` (ONNX counts negative indices from the end), ``off`` elsewhere
  (also for indices out of range or not integers).
* ``equal`` x, y (both computed, broadcasting) or x alone with param ``constant``: 1 where
  equal, 0 elsewhere. Interval: ``{1}`` when both sides are the same point, ``{0}`` when
  their intervals are disjoint, ``[0, 1]`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.add import align, broadcast_shape
from nnbound.ops.base import Backward, Interval, Names, Op, OpKind, RelaxOptions
from nnbound.ops.relaxed_lines import interval_backward


@dataclass(frozen=True)
class IntervalOp(Op):
    """A relaxed operator whose backward rule is its interval (slope 0 on every input)."""

    def backward(
        self,
        node: Node,
        a_lower: Tensor | None,
        a_upper: Tensor | None,
        bounds: list[Interval],
        in_shapes: list[Shape],
        out_shape: Shape,
        options: RelaxOptions,
    ) -> Backward:
        lo, up = self.interval(node, bounds)
        return interval_backward(a_lower, a_upper, lo, up, len(node.inputs))


def _const(value: float, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _axis(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise InputError(f"{what} axis {axis} is out of range for rank {rank}")
    return axis % rank


# -- argmax ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArgMaxOp(IntervalOp):
    """The index of the first maximum along attr ``axis`` (attr ``keepdims``)."""

    def _attrs(self, node: Node, rank: int) -> tuple[int, bool]:
        extra = set(node.attrs) - {"axis", "keepdims"}
        if extra or node.params:
            raise InputError(f"argmax has unknown attrs or params {sorted(extra)}")
        return _axis(int(node.attrs.get("axis", 0)), rank, "argmax"), bool(
            node.attrs.get("keepdims", True)
        )

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"argmax takes one input, got {len(in_shapes)}")
        shape = in_shapes[0]
        axis, keep = self._attrs(node, len(shape))
        if keep:
            return (*shape[:axis], 1, *shape[axis + 1 :])
        return (*shape[:axis], *shape[axis + 1 :])

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        x = xs[0]
        axis, keep = self._attrs(node, x.dim() - 1)
        return torch.argmax(x, dim=1 + axis, keepdim=keep).to(x.dtype)

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        axis, keep = self._attrs(node, lo.dim() - 1)
        dim = 1 + axis
        best_low = lo.amax(dim, keepdim=True)
        possible = up >= best_low  # entries that can be a maximum
        n = lo.shape[dim]
        index = torch.arange(n, device=lo.device, dtype=lo.dtype)
        index = index.reshape(n, *([1] * (lo.dim() - dim - 1)))
        big = torch.tensor(float(n), dtype=lo.dtype, device=lo.device)
        first = torch.where(possible, index, big).amin(dim, keepdim=keep)
        last = torch.where(possible, index, -big).amax(dim, keepdim=keep)
        return first, last

    def summary(self, node: Node) -> str:
        return f"argmax(axis={node.attrs.get('axis', 0)})"


# -- onehot ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OneHotOp(IntervalOp):
    """``values[1]`` at the index, ``values[0]`` elsewhere, along a new axis of ``depth``."""

    def _attrs(self, node: Node, rank_in: int) -> tuple[int, int, float, float]:
        extra = set(node.attrs) - {"depth", "axis", "values"}
        if extra or node.params:
            raise InputError(f"onehot has unknown attrs or params {sorted(extra)}")
        if "depth" not in node.attrs:
            raise InputError("onehot needs the attr depth")
        depth = int(node.attrs["depth"])
        if depth < 1:
            raise InputError(f"onehot depth must be positive, got {depth}")
        axis = _axis(int(node.attrs.get("axis", -1)), rank_in + 1, "onehot")
        off, on = (float(v) for v in node.attrs.get("values", (0.0, 1.0)))
        return depth, axis, off, on

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"onehot takes one input (the indices), got {len(in_shapes)}")
        shape = in_shapes[0]
        depth, axis, _, _ = self._attrs(node, len(shape))
        return (*shape[:axis], depth, *shape[axis:])

    def _classes(self, like: Tensor, depth: int, axis: int) -> Tensor:
        """``0 .. depth - 1`` shaped to broadcast along the new axis of a batched output."""
        k = torch.arange(depth, device=like.device, dtype=like.dtype)
        return k.reshape(depth, *([1] * (like.dim() - 2 - axis)))

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        idx = xs[0]
        depth, axis, off, on = self._attrs(node, idx.dim() - 1)
        idx = torch.where(idx < 0, idx + depth, idx).unsqueeze(1 + axis)
        hit = idx == self._classes(idx, depth, axis)
        return torch.where(hit, _const(on, idx), _const(off, idx))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        depth, axis, off, on = self._attrs(node, lo.dim() - 1)
        lo, up = lo.unsqueeze(1 + axis), torch.maximum(up, lo).unsqueeze(1 + axis)
        k = self._classes(lo, depth, axis)
        # the index can be k (or k - depth, counted from the end)
        can = ((lo <= k) & (up >= k)) | ((lo <= k - depth) & (up >= k - depth))
        point = lo == up
        must = point & ((lo == k) | (lo == k - depth))
        cannot = ~can
        v_on, v_off = _const(on, lo), _const(off, lo)
        v_min, v_max = _const(min(on, off), lo), _const(max(on, off), lo)
        low = torch.where(must, v_on, torch.where(cannot, v_off, v_min))
        high = torch.where(must, v_on, torch.where(cannot, v_off, v_max))
        return low, high

    def summary(self, node: Node) -> str:
        return f"onehot(depth={node.attrs.get('depth')}, axis={node.attrs.get('axis', -1)})"


# -- equal -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EqualOp(IntervalOp):
    """``1.0`` where ``x == y`` (or ``x == constant``), ``0.0`` elsewhere."""

    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        const = node.params.get("constant")
        extra = set(node.params) - {"constant"}
        if extra or node.attrs:
            raise InputError(f"equal has unknown params or attrs {sorted(extra)}")
        shapes = list(in_shapes)
        if const is not None:
            shapes.append(tuple(const.shape))
        if len(shapes) != 2 or not in_shapes:
            raise InputError("equal compares x with y or with the param constant")
        return broadcast_shape(shapes, "equal")

    def _operands(self, node: Node, xs: list[Tensor], fill) -> list[Tensor]:
        const = node.params.get("constant")
        if const is not None:
            xs = [*xs, fill(const)]
        rank = max(t.dim() - 1 for t in xs)
        return [align(t, 1, rank) for t in xs]

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        x, y = self._operands(node, list(xs), lambda c: c.unsqueeze(0))
        return (x == y).to(xs[0].dtype)

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        los = self._operands(node, [b[0] for b in bounds], lambda c: c.unsqueeze(0))
        ups = self._operands(node, [b[1] for b in bounds], lambda c: c.unsqueeze(0))
        (lx, ly), (ux, uy) = los, ups
        same_point = (lx == ux) & (ly == uy) & (lx == ly)
        disjoint = (ux < ly) | (uy < lx)
        dtype = bounds[0][0].dtype
        low = same_point.to(dtype)
        high = (~disjoint).to(dtype)
        return low, high

    def summary(self, node: Node) -> str:
        return "equal(x, constant)" if "constant" in node.params else "equal(x, y)"


ARGMAX = ArgMaxOp("argmax", OpKind.RELAXED, names=Names(onnx=("ArgMax",), torch=("argmax",)))
ONEHOT = OneHotOp("onehot", OpKind.RELAXED, names=Names(onnx=("OneHot",), torch=("one_hot",)))
EQUAL = EqualOp("equal", OpKind.RELAXED, names=Names(onnx=("Equal",), torch=("eq", "__eq__")))

OPS = (ARGMAX, ONEHOT, EQUAL)

__all__ = ["ARGMAX", "EQUAL", "ONEHOT", "OPS", "ArgMaxOp", "EqualOp", "IntervalOp", "OneHotOp"]
