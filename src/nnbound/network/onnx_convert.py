"""ONNX -> graph converters for shape and layout operators, and the tensor-level helpers the
other converter modules share.

Reshape-like nodes (``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Expand`` to the
same size, ``Identity``, ``Dropout``, a ``Transpose`` that only moves size-1 axes) write no
graph node: the ONNX value aliases its input's tensor under a new ONNX shape (see
:mod:`nnbound.network.onnx_graph_builder`). ``Slice`` and ``Split`` (one ``slice`` per output)
become ``slice`` nodes, ``Gather`` with constant indices a ``slice`` (evenly stepping
indices) or a ``gather``, ``Transpose`` a ``transpose``, following :mod:`nnbound.ops`
(per-sample axes). ``Shape`` / ``Size`` of a computed tensor are constants. Every converter
has the signature ``(builder, node, label) -> None``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from nnbound.network.graph import Shape
from nnbound.network.onnx_graph_builder import GraphBuilder, Value, onnx_attrs, order_preserving

Converter = Callable[[GraphBuilder, onnx.NodeProto, str], None]


def int_list(arr: Any) -> list[int]:
    return [int(v) for v in np.asarray(arr).reshape(-1)]


def norm_axis(b: GraphBuilder, node: onnx.NodeProto, label: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise b.bad(node, label, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def nested(idx: np.ndarray) -> Any:
    """An index array as nested tuples of ints (hashable node attributes)."""
    if idx.ndim == 0:
        return int(idx)
    return tuple(nested(i) for i in idx)


# -- tensor-level helpers (per-sample shapes, no batch axis) -----------------------------------
def transpose_tensor(
    b: GraphBuilder,
    node: onnx.NodeProto | None,
    label: str,
    tensor: str,
    shape: Shape,
    perm: Sequence[int],
) -> tuple[str, Shape]:
    """``tensor`` (of per-sample ``shape``) transposed by ``perm``: a reshape when only
    size-1 axes move, else a ``transpose`` node."""
    out = tuple(shape[p] for p in perm)
    if order_preserving(shape, perm):
        return b.view_tensor(b.view_tensor(tensor, shape, label), out, label), out
    t = b.view_tensor(tensor, shape, label)
    return b.emit("transpose", [t], node, label, attrs={"perm": tuple(int(p) for p in perm)})


def slice_tensor(
    b: GraphBuilder,
    node: onnx.NodeProto | None,
    label: str,
    tensor: str,
    shape: Shape,
    ranges: dict[int, tuple[int, int, int]],
) -> tuple[str, Shape]:
    """``tensor[start:stop:step]`` along each axis of ``ranges`` (normalised, positive
    steps, non-empty); axes taken whole are left out of the node."""
    ranges = {a: r for a, r in ranges.items() if r != (0, shape[a], 1)}
    t = b.view_tensor(tensor, shape, label)
    if not ranges:
        return t, shape
    axes = tuple(sorted(ranges))
    return b.emit(
        "slice",
        [t],
        node,
        label,
        attrs={
            "starts": tuple(ranges[a][0] for a in axes),
            "ends": tuple(ranges[a][1] for a in axes),
            "steps": tuple(ranges[a][2] for a in axes),
            "axes": axes,
        },
    )


def gather_tensor(
    b: GraphBuilder,
    node: onnx.NodeProto | None,
    label: str,
    tensor: str,
    shape: Shape,
    axis: int,
    idx: np.ndarray,
) -> tuple[str, Shape]:
    """``take(tensor, idx, axis)`` with non-negative in-range ``idx``: a ``slice`` when the
    indices step evenly forward (the result then keeps one axis for ``idx``: the caller views
    it as the ONNX shape), else a ``gather`` node."""
    flat = idx.reshape(-1)
    steps = np.diff(flat)
    if flat.size == 1 or (steps.size and steps[0] >= 1 and bool(np.all(steps == steps[0]))):
        step = int(steps[0]) if steps.size else 1
        stop = int(flat[-1]) + 1
        return slice_tensor(b, node, label, tensor, shape, {axis: (int(flat[0]), stop, step)})
    t = b.view_tensor(tensor, shape, label)
    return b.emit("gather", [t], node, label, attrs={"axis": axis, "indices": nested(idx)})


def pad_tensor(
    b: GraphBuilder,
    node: onnx.NodeProto | None,
    label: str,
    tensor: str,
    shape: Shape,
    pads: Sequence[tuple[int, int]],
    value: float = 0.0,
) -> tuple[str, Shape]:
    """``tensor`` padded by ``pads`` ((before, after) per axis, non-negative) with
    ``value``."""
    t = b.view_tensor(tensor, shape, label)
    if not any(p for pair in pads for p in pair):
        return t, shape
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return b.emit("pad", [t], node, label, attrs={"pads": pads, "value": float(value)})


# -- aliases ----------------------------------------------------------------------------------
def convert_identity(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    b.set(node, b.computed(node, 0, label))


def convert_dropout(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    mode = b.const(node, 2, label, "training_mode")
    if (mode is not None and bool(np.asarray(mode).reshape(-1)[0])) or int(
        onnx_attrs(node).get("is_test", 1) if b.opset < 7 else 1
    ) == 0:
        raise b.unsupported(node, label, "in training mode")
    if len(node.output) > 1 and node.output[1] and b.uses.get(node.output[1], 0):
        raise b.unsupported(node, label, "its mask output is used")
    b.set(node, b.computed(node, 0, label))


def convert_flatten(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    rank = len(x.onnx)
    axis = int(onnx_attrs(node).get("axis", 1))
    if not -rank <= axis <= rank:
        raise b.bad(node, label, f"axis {axis} is out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    b.set(node, x.reshaped((math.prod(x.onnx[:axis]), math.prod(x.onnx[axis:]))))


def convert_reshape(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    target_arr = b.const(node, 1, label, "target shape")
    if target_arr is not None:
        target = int_list(target_arr)
    elif "shape" in attrs:  # opset < 5
        target = [int(v) for v in attrs["shape"]]
    else:
        raise b.bad(node, label, "no target shape")
    allowzero = int(attrs.get("allowzero", 0))
    out: list[int] = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(x.onnx):
                raise b.bad(node, label, f"target {target} copies axis {i} of shape {x.onnx}")
            d = x.onnx[i]
        out.append(d)
    numel = math.prod(x.onnx)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise b.bad(node, label, f"invalid target shape {target}")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or numel % known:
            raise b.bad(node, label, f"cannot reshape {x.onnx} to {target}")
        out[out.index(-1)] = numel // known
    if math.prod(out) != numel:
        raise b.bad(node, label, f"cannot reshape {x.onnx} to {target}")
    b.set(node, x.reshaped(out))


def axes_input(b: GraphBuilder, node: onnx.NodeProto, label: str) -> list[int] | None:
    attrs = onnx_attrs(node)
    if "axes" in attrs:  # opset < 13 (< 18 for the reductions)
        return [int(a) for a in attrs["axes"]]
    arr = b.const(node, 1, label, "axes")
    return None if arr is None else int_list(arr)


def convert_squeeze(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    axes = axes_input(b, node, label)
    rank = len(x.onnx)
    if axes is None:
        drop = {i for i, d in enumerate(x.onnx) if d == 1}
    else:
        drop = {norm_axis(b, node, label, a, rank) for a in axes}
        bad = [a for a in sorted(drop) if x.onnx[a] != 1]
        if bad:
            raise b.unsupported(node, label, f"axes {bad} of shape {x.onnx} are not of size 1")
    b.set(node, x.reshaped([d for i, d in enumerate(x.onnx) if i not in drop]))


def convert_unsqueeze(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    axes = axes_input(b, node, label)
    if axes is None:
        raise b.bad(node, label, "no axes")
    rank = len(x.onnx) + len(axes)
    shape = list(x.onnx)
    for a in sorted(norm_axis(b, node, label, a, rank) for a in axes):
        shape.insert(a, 1)
    b.set(node, x.reshaped(shape))


def convert_expand(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    shape = b.const(node, 1, label, "shape")
    assert shape is not None
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(x.onnx, tuple(int_list(shape))))
    except ValueError:
        raise b.bad(node, label, f"cannot expand {x.onnx} to {int_list(shape)}") from None
    if math.prod(out) != math.prod(x.onnx):
        raise b.unsupported(node, label, f"it copies the computed tensor {x.onnx} to {out}")
    b.set(node, x.reshaped(out))


def convert_shape(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    # the shape of a computed tensor is known at import time (batch size 1)
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    dims = list(x.onnx)
    rank = len(dims)
    start, end = int(attrs.get("start", 0)), int(attrs.get("end", rank))
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    b.add_const(node.output[0], np.array(dims[start:end], dtype=np.int64))


def convert_size(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    b.add_const(node.output[0], np.array(math.prod(x.onnx), dtype=np.int64))


# -- transposes, slices, gathers -----------------------------------------------------------
def transpose_value(
    b: GraphBuilder, node: onnx.NodeProto, label: str, x: Value, perm: Sequence[int]
) -> Value:
    """ONNX ``Transpose(x, perm)``: an alias when only size-1 axes move, a ``transpose`` of
    the canonical view when the batch axis stays first, else of the full view."""
    out = tuple(x.onnx[p] for p in perm)
    if order_preserving(x.onnx, perm):
        return x.reshaped(out)
    if x.batched and perm[0] == 0:
        t, shape = transpose_tensor(
            b, node, label, b.canonical(x, label), x.sample, [p - 1 for p in perm[1:]]
        )
        return Value(t, shape, out, True, x.kind)
    t, shape = transpose_tensor(b, node, label, b.full(x, label), x.onnx, perm)
    return Value(t, shape, out, False, x.kind)


def convert_transpose(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    rank = len(x.onnx)
    perm = [int(p) for p in onnx_attrs(node).get("perm", list(range(rank))[::-1])]
    if sorted(perm) != list(range(rank)):
        raise b.bad(node, label, f"perm {perm} does not fit rank {rank}")
    b.set(node, transpose_value(b, node, label, x, perm))


def _slice_ranges(
    b: GraphBuilder,
    node: onnx.NodeProto,
    label: str,
    x: Value,
    starts: list[int],
    ends: list[int],
    axes: list[int],
    steps: list[int],
) -> dict[int, list[int]]:
    """ONNX Slice arguments normalised: ONNX axis -> the kept indices along it."""
    rank = len(x.onnx)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise b.bad(node, label, "starts, ends, axes and steps differ in length")
    out: dict[int, list[int]] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = norm_axis(b, node, label, axis, rank)
        dim = x.onnx[a]
        if step == 0:
            raise b.bad(node, label, "a slice step is 0")
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        kept = list(range(start, end, step))
        if not kept:
            raise b.unsupported(node, label, f"it keeps nothing of axis {axis} (empty tensor)")
        out[a] = kept
    return out


def take(
    b: GraphBuilder, node: onnx.NodeProto, label: str, x: Value, kept: dict[int, list[int]]
) -> Value:
    """``x`` restricted to the ``kept`` indices along each ONNX axis (a slice, or a gather
    for reversed / irregular index lists)."""
    kept = {a: k for a, k in kept.items() if k != list(range(x.onnx[a]))}
    out = tuple(len(kept[a]) if a in kept else d for a, d in enumerate(x.onnx))
    if not kept:
        return x
    tensor, batched = b.axes_view(x, sorted(kept), label)
    shape = x.sample if batched else x.onnx
    shift = 1 if batched else 0
    regular = {
        a - shift: (k[0], k[-1] + 1, k[1] - k[0] if len(k) > 1 else 1)
        for a, k in kept.items()
        if len(k) == 1 or (k[1] > k[0] and all(j - i == k[1] - k[0] for i, j in _pairs(k)))
    }
    tensor, shape = slice_tensor(b, node, label, tensor, shape, regular)
    for a, k in kept.items():
        if a - shift not in regular:
            tensor, shape = gather_tensor(b, node, label, tensor, shape, a - shift, np.array(k))
    return Value(tensor, shape, out, batched, x.kind)


def _pairs(seq: Sequence[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(seq))


def convert_slice(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    if b.opset < 10 or "starts" in attrs:
        starts = [int(v) for v in attrs.get("starts", [])]
        ends = [int(v) for v in attrs.get("ends", [])]
        axes = [int(v) for v in attrs.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        s, e = b.const(node, 1, label, "starts"), b.const(node, 2, label, "ends")
        if s is None or e is None:
            raise b.bad(node, label, "missing starts or ends")
        starts, ends = int_list(s), int_list(e)
        ax, st = b.const(node, 3, label, "axes"), b.const(node, 4, label, "steps")
        axes = list(range(len(starts))) if ax is None else int_list(ax)
        steps = [1] * len(starts) if st is None else int_list(st)
    b.set(
        node, take(b, node, label, x, _slice_ranges(b, node, label, x, starts, ends, axes, steps))
    )


def convert_split(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    axis = norm_axis(b, node, label, int(attrs.get("axis", 0)), len(x.onnx))
    dim = x.onnx[axis]
    n_out = len(node.output)
    sizes_arr = b.const(node, 1, label, "split")
    if sizes_arr is not None:
        sizes = int_list(sizes_arr)
    elif "split" in attrs:  # opset < 13
        sizes = [int(v) for v in attrs["split"]]
    else:
        n = int(attrs.get("num_outputs", n_out))
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    if len(sizes) != n_out or sum(sizes) != dim or min(sizes) < 1:
        raise b.bad(node, label, f"split sizes {sizes} do not cut axis {axis} of size {dim}")
    start = 0
    for k, size in enumerate(sizes):
        if node.output[k]:
            b.set(node, take(b, node, label, x, {axis: list(range(start, start + size))}), k)
        start += size


def convert_gather(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    idx = b.const(node, 1, label, "indices")
    assert idx is not None
    if idx.dtype.kind not in "iu":
        raise b.bad(node, label, f"indices of dtype {idx.dtype}")
    rank = len(x.onnx)
    axis = norm_axis(b, node, label, int(onnx_attrs(node).get("axis", 0)), rank)
    dim = x.onnx[axis]
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise b.bad(node, label, f"indices out of range for axis {axis} of size {dim}")
    idx = np.where(idx < 0, idx + dim, idx)
    out = x.onnx[:axis] + idx.shape + x.onnx[axis + 1 :]
    if idx.size == 0:
        raise b.unsupported(node, label, "empty indices (empty tensor)")
    if idx.size == 1:
        # one index: a slice of one entry, viewed without (or with) that axis
        taken = take(b, node, label, x, {axis: [int(idx.reshape(-1)[0])]})
        b.set(node, taken.reshaped(out))
        return
    tensor, batched = b.axes_view(x, [axis], label)
    a = axis - 1 if batched else axis
    shape = x.sample if batched else x.onnx
    tensor, shape = gather_tensor(b, node, label, tensor, shape, a, idx)
    b.set(node, Value(tensor, shape, out, batched, x.kind))


CONVERTERS: dict[str, Converter] = {
    "Identity": convert_identity,
    "Dropout": convert_dropout,
    "Flatten": convert_flatten,
    "Reshape": convert_reshape,
    "Squeeze": convert_squeeze,
    "Unsqueeze": convert_unsqueeze,
    "Expand": convert_expand,
    "Shape": convert_shape,
    "Size": convert_size,
    "Transpose": convert_transpose,
    "Slice": convert_slice,
    "Split": convert_split,
    "Gather": convert_gather,
}

__all__ = [
    "CONVERTERS",
    "Converter",
    "axes_input",
    "gather_tensor",
    "int_list",
    "nested",
    "norm_axis",
    "pad_tensor",
    "slice_tensor",
    "take",
    "transpose_tensor",
    "transpose_value",
]
