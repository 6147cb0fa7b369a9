"""Graph nodes for the shape, indexing and layout calls of a traced model: ``view`` /
``reshape`` / ``flatten`` / ``squeeze``, ``permute`` / ``transpose``, indexing (slices, integer
and list indices), ``chunk`` / ``split`` / ``narrow`` / ``unbind`` (one ``slice`` node per
piece), ``cat`` / ``stack``, ``F.pad`` (constant; ``reflect`` / ``replicate`` / ``circular`` as
``gather`` nodes), nearest ``interpolate``, ``sum`` / ``mean`` and ``softmax``; plus the
shape queries (``size``, ``shape``, ``dim``) that hand back constants and the batch size.

Converters have the :data:`~nnbound.network.torch_graph_builder.Converter` signature and sit
in :data:`CONVERTERS` by torch name; :mod:`nnbound.network.torch_functions` dispatches to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.network import torch_layers as tl
from nnbound.network.torch_graph_builder import (
    BATCH,
    Converter,
    GraphBuilder,
    Sym,
    axis,
    bind,
    contains,
    need_sym,
    registrar,
    varargs,
)

CONVERTERS: dict[str, Converter] = {}
_register = registrar(CONVERTERS)


# -- shapes ---------------------------------------------------------------------------------
def same_batch_reshape(b: GraphBuilder, x: Sym, real: Any, dim: Any = None) -> Sym:
    """``x`` reshaped to torch's result shape ``real.shape[1:]`` (squeeze, unsqueeze,
    unflatten: size-1 axes and splits that keep the data order and the batch axis)."""
    if dim is not None:
        axis(dim, x.rank + (1 if b.call.startswith("unsqueeze") else 0), b.where)
    if not isinstance(real, Tensor) or real.dim() == 0 or real.shape[0] != x.value.shape[0]:
        raise UnsupportedError(f"{b.where}: reshapes the batch axis")
    return b.reshape(x, tuple(real.shape[1:]))


def flatten(b: GraphBuilder, x: Sym, start_dim: Any, end_dim: Any, real: Any) -> Sym:
    """``flatten(start_dim, end_dim)`` on the batched tensor; start_dim must not be 0."""
    start = axis(start_dim, x.rank, b.where) if x.rank else 0
    if x.rank == 0:
        raise UnsupportedError(f"{b.where}: flatten of a scalar per sample")
    end = axis(end_dim, x.rank, b.where)
    if start > end:
        raise UnsupportedError(f"{b.where}: flatten({start_dim}, {end_dim})")
    shape = (*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :])
    return b.reshape(x, shape)


@_register("flatten")
def _flatten(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "start_dim", "end_dim"), args, kwargs, {"start_dim": 0, "end_dim": -1})
    return flatten(b, need_sym(b, kw["input"]), kw["start_dim"], kw["end_dim"], real)


@_register("view", "reshape")
def _view(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    x = need_sym(b, args[0] if args else kwargs.get("input"))
    sizes = varargs(args) if len(args) > 1 else list(kwargs.get("shape", kwargs.get("size", ())))
    if not sizes:
        raise UnsupportedError(f"{b.where}: reshape to a scalar")
    total = math.prod(x.shape)
    rest = sizes[1:]
    if sizes[0] is BATCH:
        return b.reshape(x, tl.resolve_sizes(b, rest, total))
    if sizes[0] == -1 and -1 not in rest and not contains(rest, type(BATCH)):
        return b.reshape(x, tl.resolve_sizes(b, rest, total))
    raise UnsupportedError(
        f"{b.where}: reshape to {tuple(sizes)}: the first size must be the batch size "
        "(x.size(0)) or -1 with the other sizes given"
    )


@_register("view_as", "reshape_as")
def _view_as(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    return same_batch_reshape(b, need_sym(b, args[0]), real)


@_register("squeeze", "unsqueeze", "unflatten")
def _squeeze(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "dim", "sizes"), args, kwargs)
    dim = kw.get("dim")
    if isinstance(dim, (tuple, list)):
        for d in dim:
            axis(d, need_sym(b, kw["input"]).rank, b.where)
        dim = None
    return same_batch_reshape(b, need_sym(b, kw["input"]), real, dim)


@_register("permute")
def _permute(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    x = need_sym(b, args[0] if args else kwargs.get("input"))
    dims = varargs(args) if len(args) > 1 else list(kwargs.get("dims", ()))
    full = [d + x.rank + 1 if isinstance(d, int) and d < 0 else d for d in dims]
    if sorted(full) != list(range(x.rank + 1)) or full[0] != 0:
        raise UnsupportedError(f"{b.where}: permute{tuple(dims)} moves the batch axis")
    perm = tuple(d - 1 for d in full[1:])
    if perm == tuple(range(x.rank)):
        return x
    return b.emit("transpose", [x], attrs={"perm": perm})


@_register("transpose", "swapaxes", "swapdims")
def _transpose(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "dim0", "dim1"), args, kwargs)
    x = need_sym(b, kw["input"])
    i, j = axis(kw["dim0"], x.rank, b.where), axis(kw["dim1"], x.rank, b.where)
    perm = list(range(x.rank))
    perm[i], perm[j] = perm[j], perm[i]
    if i == j:
        return x
    return b.emit("transpose", [x], attrs={"perm": tuple(perm)})


@_register("size")
def _size(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "dim"), args, kwargs)
    shape = (BATCH, *need_sym(b, kw["input"]).shape)
    if kw.get("dim") is None:
        return shape
    return shape[kw["dim"]]


@_register("dim", "ndimension")
def _dim(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    return need_sym(b, args[0]).rank + 1


@_register("getattr")
def _getattr(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    x, name = need_sym(b, args[0]), args[1]
    if name == "shape":
        return (BATCH, *x.shape)
    if name == "ndim":
        return x.rank + 1
    if name in ("dtype", "device", "is_cuda"):
        return real
    raise UnsupportedError(f"{b.where}: attribute {name!r} of a computed tensor")


# -- indexing, splitting, joining -----------------------------------------------------------
def _slice_axes(b: GraphBuilder, x: Sym, cuts: dict[int, tuple[int, int, int]]) -> Sym:
    """One ``slice`` node taking ``start:end:step`` on each per-sample axis in ``cuts``."""
    cuts = {a: c for a, c in cuts.items() if c != (0, x.shape[a], 1)}
    if not cuts:
        return x
    axes = tuple(sorted(cuts))
    return b.emit(
        "slice",
        [x],
        attrs={
            "starts": tuple(cuts[a][0] for a in axes),
            "ends": tuple(cuts[a][1] for a in axes),
            "steps": tuple(cuts[a][2] for a in axes),
            "axes": axes,
        },
    )


def _index_list(b: GraphBuilder, idx: Any, size: int) -> Any:
    t = torch.as_tensor(idx)
    if t.dtype == torch.bool:
        if t.dim() != 1:
            raise UnsupportedError(f"{b.where}: multi-dimensional boolean mask")
        t = t.nonzero().reshape(-1)
    if t.is_floating_point():
        raise UnsupportedError(f"{b.where}: float indices")
    t = torch.where(t < 0, t + size, t)
    if bool(((t < 0) | (t >= size)).any()):
        raise UnsupportedError(f"{b.where}: index out of range")
    return t.tolist()


def _nested_tuple(v: Any) -> Any:
    return tuple(_nested_tuple(i) for i in v) if isinstance(v, list) else int(v)


@_register("getitem")
def _getitem(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    obj, idx = args
    if isinstance(obj, (tuple, list)):
        return obj[idx]
    x = need_sym(b, obj)
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(i, Sym) for i in items):
        raise UnsupportedError(f"{b.where}: indexing with a computed tensor")
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items[k : k + 1] = [slice(None)] * (x.rank + 1 - consumed)
    while len([i for i in items if i is not None]) < x.rank + 1:
        items.append(slice(None))
    if items[0] is None:
        raise UnsupportedError(f"{b.where}: indexing inserts an axis before the batch axis")
    if not (isinstance(items[0], slice) and items[0] in (slice(None), slice(None, None, 1))):
        raise UnsupportedError(f"{b.where}: indexing selects along the batch axis")
    cuts: dict[int, tuple[int, int, int]] = {}
    gathers: list[tuple[int, Any]] = []
    has_int = False
    a = 0
    for item in items[1:]:
        if item is None:
            continue
        size = x.shape[a]
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step < 1:
                raise UnsupportedError(f"{b.where}: a negative slice step")
            stop = max(stop, start)
            cuts[a] = (start, stop, step)
        elif isinstance(item, int) and not isinstance(item, bool):
            k = item + size if item < 0 else item
            if not 0 <= k < size:
                raise UnsupportedError(f"{b.where}: index {item} out of range for size {size}")
            cuts[a] = (k, k + 1, 1)
            has_int = True
        else:
            gathers.append((a, _index_list(b, item, size)))
        a += 1
    if len(gathers) > 1 or (gathers and has_int):
        raise UnsupportedError(f"{b.where}: more than one advanced index")
    out = _slice_axes(b, x, cuts)
    for ax, indices in gathers:
        out = b.emit("gather", [out], attrs={"axis": ax, "indices": _nested_tuple(indices)})
    return same_batch_reshape(b, out, real)


def _split_along(
    b: GraphBuilder, x: Sym, dim: Any, real: Any, drop: bool = False
) -> tuple[Sym, ...]:
    """One ``slice`` per piece torch returns (``chunk``, ``split``, ``tensor_split``,
    ``unbind``): the pieces are consecutive along ``dim``, sizes read from ``real``."""
    ax = axis(dim, x.rank, b.where)
    pieces, start = [], 0
    for r in real:
        size = 1 if drop else int(r.shape[ax + 1])
        piece = _slice_axes(b, x, {ax: (start, start + size, 1)})
        pieces.append(same_batch_reshape(b, piece, r) if drop else piece)
        start += size
    return tuple(pieces)


@_register("chunk", "split", "tensor_split", "split_with_sizes")
def _chunk(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    x = need_sym(b, args[0] if args else kwargs.get("input", kwargs.get("tensor")))
    dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
    return _split_along(b, x, dim, real)


@_register("unbind")
def _unbind(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "dim"), args, kwargs, {"dim": 0})
    return _split_along(b, need_sym(b, kw["input"]), kw["dim"], real, drop=True)


@_register("narrow")
def _narrow(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "dim", "start", "length"), args, kwargs)
    x = need_sym(b, kw["input"])
    ax = axis(kw["dim"], x.rank, b.where)
    start = int(kw["start"]) + (x.shape[ax] if int(kw["start"]) < 0 else 0)
    return _slice_axes(b, x, {ax: (start, start + int(kw["length"]), 1)})


@_register("cat", "concat", "concatenate", "stack")
def _cat(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("tensors", "dim"), args, kwargs, {"dim": 0})
    items = [t for t in kw["tensors"] if not (isinstance(t, Tensor) and t.numel() == 0)]
    if not items or not all(isinstance(t, Sym) for t in items):
        raise UnsupportedError(f"{b.where}: joins a constant tensor with computed ones")
    if b.call == "stack":
        ax = axis(kw["dim"], items[0].rank + 1, b.where)
        items = [b.reshape(t, (*t.shape[:ax], 1, *t.shape[ax:])) for t in items]
    else:
        ax = axis(kw["dim"], items[0].rank, b.where)
    if len(items) == 1:
        return items[0]
    return b.emit("concat", items, attrs={"axis": ax})


# -- padding, resizing, reductions ----------------------------------------------------------
def _pad_indices(mode: str, size: int, before: int, after: int) -> list[int]:
    out = []
    for i in range(-before, size + after):
        if mode == "replicate":
            j = min(max(i, 0), size - 1)
        elif mode == "circular":
            j = i % size
        else:  # reflect
            j = -i if i < 0 else (2 * (size - 1) - i if i >= size else i)
        out.append(j)
    return out


def pad_mode(b: GraphBuilder, x: Sym, pad: Sequence[Any], mode: str, value: Any) -> Sym:
    """``F.pad(x, pad, mode, value)``: a ``pad`` node (negative pads crop with a ``slice``);
    ``reflect`` / ``replicate`` / ``circular`` as a ``gather`` per padded axis."""
    pad = [int(p) for p in pad]
    if len(pad) % 2:
        raise UnsupportedError(f"{b.where}: pad list of odd length {len(pad)}")
    n = len(pad) // 2
    if n > x.rank:
        if any(pad[2 * x.rank :]):
            raise UnsupportedError(f"{b.where}: pads the batch axis")
        n = x.rank
    pairs = [(0, 0)] * x.rank
    for k in range(n):
        pairs[x.rank - 1 - k] = (pad[2 * k], pad[2 * k + 1])
    if mode != "constant":
        if any(p < 0 for pair in pairs for p in pair):
            raise UnsupportedError(f"{b.where}: negative {mode} padding")
        out = x
        for ax, (lo, hi) in enumerate(pairs):
            if lo or hi:
                if mode == "reflect" and max(lo, hi) >= x.shape[ax]:
                    raise UnsupportedError(f"{b.where}: reflect padding as large as the input")
                idx = _pad_indices(mode, x.shape[ax], lo, hi)
                out = b.emit("gather", [out], attrs={"axis": ax, "indices": tuple(idx)})
        return out
    fill = 0.0 if value is None else float(value)
    out = x
    if any(p > 0 for pair in pairs for p in pair):
        pos = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pairs)
        out = b.emit("pad", [x], attrs={"pads": pos, "value": fill})
    if any(p < 0 for pair in pairs for p in pair):
        cuts = {}
        for ax, (lo, hi) in enumerate(pairs):
            if lo < 0 or hi < 0:
                size = out.shape[ax]
                cuts[ax] = (-min(lo, 0), size + min(hi, 0), 1)
        out = _slice_axes(b, out, cuts)
    return out


@_register("pad")
def _pad(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "pad", "mode", "value"), args, kwargs, {"mode": "constant"})
    if kw["mode"] not in ("constant", "reflect", "replicate", "circular"):
        raise UnsupportedError(f"{b.where}: padding mode {kw['mode']!r}")
    return pad_mode(b, need_sym(b, kw["input"]), kw["pad"], kw["mode"], kw.get("value"))


def resize_nearest(b: GraphBuilder, x: Sym, real: Any) -> Sym:
    """Nearest-neighbour resizing to torch's output size: ``resize_nearest`` for integer
    up-scaling, a strided ``slice`` for integer down-scaling."""
    if x.rank == 2:  # 1-D signal (C, L) as (C, L, 1)
        t = resize_nearest(b, b.reshape(x, (*x.shape, 1)), real.unsqueeze(-1))
        return b.reshape(t, tuple(real.shape[1:]))
    if x.rank != 3 or not isinstance(real, Tensor) or real.dim() != 4:
        raise UnsupportedError(f"{b.where}: nearest resizing of shape {x.shape}")
    (h, w), (ho, wo) = x.shape[1:], tuple(real.shape[2:])
    if ho >= h and wo >= w and ho % h == 0 and wo % w == 0:
        return b.emit("resize_nearest", [x], attrs={"scales": (ho // h, wo // w)})
    if ho <= h and wo <= w and h % ho == 0 and w % wo == 0:
        return _slice_axes(b, x, {1: (0, h, h // ho), 2: (0, w, w // wo)})
    raise UnsupportedError(
        f"{b.where}: nearest resizing {h}x{w} -> {ho}x{wo} (only integer factors)"
    )


@_register("interpolate", "upsample", "upsample_nearest")
def _interpolate(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    names = (
        "input",
        "size",
        "scale_factor",
        "mode",
        "align_corners",
        "recompute_scale_factor",
        "antialias",
    )
    kw = bind(b, names, args, kwargs, {"mode": "nearest"})
    if b.call == "upsample_nearest":
        kw["mode"] = "nearest"
    if kw["mode"] not in ("nearest", "nearest-exact"):
        raise UnsupportedError(f"{b.where}: interpolation mode {kw['mode']!r} (only 'nearest')")
    return resize_nearest(b, need_sym(b, kw["input"]), real)


def _reduction(kind: str) -> Converter:
    def convert(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
        kw = bind(b, ("input", "dim", "keepdim", "dtype"), args, kwargs, {"keepdim": False})
        if kw.get("dtype") is not None:
            raise UnsupportedError(f"{b.where}: {kind} with a dtype")
        return tl.reduce(b, need_sym(b, kw["input"]), kind, kw.get("dim"), kw["keepdim"])

    return convert


_register("sum")(_reduction("sum"))
_register("mean")(_reduction("mean"))


def softmax(b: GraphBuilder, x: Sym, dim: Any) -> Sym:
    if dim is None:
        raise UnsupportedError(f"{b.where}: softmax without dim (implicit dimension)")
    return b.emit("softmax", [x], attrs={"axis": axis(dim, x.rank, b.where)})


@_register("softmax")
def _softmax(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], real: Any) -> Any:
    kw = bind(b, ("input", "dim", "_stacklevel", "dtype"), args, kwargs)
    if kw.get("dtype") is not None:
        raise UnsupportedError(f"{b.where}: softmax with a dtype")
    return softmax(b, need_sym(b, kw["input"]), kw.get("dim"))


__all__ = [
    "CONVERTERS",
    "flatten",
    "pad_mode",
    "resize_nearest",
    "same_batch_reshape",
    "softmax",
]
