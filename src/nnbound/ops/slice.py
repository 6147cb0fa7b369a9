"""Strided slices along some per-sample axes, with ONNX ``Slice`` semantics: negative starts
and ends count from the end, out-of-range ones are clamped (``INT64_MAX`` means "to the end"),
steps may be negative (the slice runs backwards). An ONNX ``Split`` output is one slice.

Linear: the transpose writes the coefficients back into a zero tensor of the input's shape at
the sliced positions (the entries the slice drops get nothing). A negative-step slice is the
positive-step slice over the same entries, flipped, so both directions share one code path.
Node attrs: ``starts``, ``ends``, ``steps`` (optional, default 1), ``axes`` (optional,
default ``0 .. len(starts) - 1``; per-sample, negative counts from the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import EllipsisType

from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, Traits


@dataclass(frozen=True)
class _Plan:
    """Per input axis a positive-step slice, and the axes to flip afterwards."""

    slices: tuple[slice, ...]
    flips: tuple[int, ...]  # negative axis numbers (valid whatever the leading axes)
    out_shape: Shape

    @property
    def index(self) -> tuple[EllipsisType | slice, ...]:
        """The index of the sliced entries, for any number of leading axes."""
        return (..., *self.slices)


def _ints(node: Node, key: str, default: tuple[int, ...] | None = None) -> tuple[int, ...]:
    value = node.attrs.get(key)
    if value is None:
        if default is None:
            raise InputError(f"slice needs attr {key!r}")
        return default
    if isinstance(value, int):
        value = (value,)
    return tuple(int(v) for v in value)


def plan(node: Node, in_shape: Shape) -> _Plan:
    """The slices ``node`` takes of an input of shape ``in_shape`` (InputError when the attrs
    do not fit it)."""
    rank = len(in_shape)
    starts, ends = _ints(node, "starts"), _ints(node, "ends")
    axes = _ints(node, "axes", tuple(range(len(starts))))
    steps = _ints(node, "steps", (1,) * len(starts))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise InputError(
            f"slice starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length"
        )
    slices = [slice(None)] * rank
    out = list(in_shape)
    flips: list[int] = []
    seen: set[int] = set()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if not -rank <= axis < rank:
            raise InputError(f"slice axis {axis} is out of range for input shape {in_shape}")
        axis %= rank
        if axis in seen:
            raise InputError(f"slice axis {axis} is given twice")
        seen.add(axis)
        if step == 0:
            raise InputError("slice step 0")
        # Python's slice clamping is ONNX's (negatives add the size; then [0, size] for a
        # positive step, [-1, size - 1] for a negative one).
        entries = range(*slice(start, end, step).indices(in_shape[axis]))
        if len(entries) == 0:
            raise InputError(
                f"slice {start}:{end}:{step} of axis {axis} (size {in_shape[axis]}) is empty"
            )
        out[axis] = len(entries)
        if step > 0:
            slices[axis] = slice(entries.start, entries.stop, step)
        else:
            slices[axis] = slice(entries[-1], entries[0] + 1, -step)
            flips.append(axis - rank)
    return _Plan(tuple(slices), tuple(flips), tuple(out))


def _take(x: Tensor, p: _Plan) -> Tensor:
    y = x[p.index]
    return y.flip(p.flips) if p.flips else y


@dataclass(frozen=True)
class SliceOp(Op):
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"slice takes one input, got {len(in_shapes)}")
        return plan(node, in_shapes[0]).out_shape

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return _take(xs[0], plan(node, tuple(xs[0].shape[1:])))

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        lo, up = bounds[0]
        p = plan(node, tuple(lo.shape[1:]))
        return _take(lo, p), _take(up, p)

    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        p = plan(node, in_shapes[0])
        out = a.new_zeros(*a.shape[:2], *in_shapes[0])
        out[p.index] = a.flip(p.flips) if p.flips else a
        return [out]

    def summary(self, node: Node) -> str:
        a = node.attrs
        return f"slice(axes {a.get('axes')}, {a.get('starts')}:{a.get('ends')}:{a.get('steps')})"


SLICE = SliceOp(
    "slice",
    OpKind.LINEAR,
    traits=Traits(monotone=True),
    names=Names(
        onnx=("Slice", "Split"),
        torch=(
            "slice",
            "narrow",
            "split",
            "split_with_sizes",
            "chunk",
            "tensor_split",
            "__getitem__",
            "getitem",
        ),
        keras=("Cropping1D", "Cropping2D"),
    ),
)

OPS = (SLICE,)

__all__ = ["OPS", "SLICE", "plan"]
