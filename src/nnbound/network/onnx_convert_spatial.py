"""ONNX -> graph converters for operators with spatial structure: ``Concat``, ``Pad``,
nearest ``Resize`` / ``Upsample``, ``Conv``, ``ConvTranspose`` and pooling.

* ``Concat`` of computed tensors is a ``concat`` node; a constant piece joins its neighbour
  through a ``pad`` and an ``add`` of the constant (no node computes a constant alone).
* ``Pad``: constant mode is a ``pad`` node (negative pads crop with a ``slice``); ``edge`` /
  ``reflect`` / ``wrap`` copy border entries with a ``gather`` per padded axis.
* Nearest ``Resize``: the input index each output index copies is computed with the node's
  coordinate transformation and rounding; integer upsampling of the last two axes is a
  ``resize_nearest`` node, any other index map a ``gather`` per resized axis.
* ``Conv`` / ``ConvTranspose``: 1-D as 2-D with height 1; asymmetric padding (explicit,
  ``auto_pad`` or ``output_shape``) becomes symmetric padding plus a ``pad`` (convolution) or
  a ``slice`` (transposed convolution) node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields

import numpy as np
import onnx

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Shape
from nnbound.network.layers import AvgPool2d, MaxPool2d
from nnbound.network.onnx_attrs import _resolve_pads
from nnbound.network.onnx_convert import (
    gather_tensor,
    int_list,
    norm_axis,
    pad_tensor,
    slice_tensor,
    take,
)
from nnbound.network.onnx_convert_math import as_float
from nnbound.network.onnx_graph_builder import KIND_REAL, GraphBuilder, Value, onnx_attrs

Converter = Callable[[GraphBuilder, onnx.NodeProto, str], None]


# -- concatenation and padding ----------------------------------------------------------------
def convert_concat(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    parts = [b.operand(node, i, label) for i in range(len(node.input))]
    parts = [p for p in parts if p is not None]
    computed = [p for p in parts if isinstance(p, Value)]
    shapes = [p.onnx if isinstance(p, Value) else tuple(p.shape) for p in parts]
    rank = len(shapes[0])
    if rank == 0 or any(len(s) != rank for s in shapes):
        raise b.bad(node, label, f"inputs of shapes {shapes} cannot be concatenated")
    axis = norm_axis(b, node, label, int(onnx_attrs(node).get("axis", 0)), rank)
    for s in shapes:
        if s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :]:
            raise b.bad(node, label, f"inputs of shapes {shapes} differ off axis {axis}")
    out = (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1 :])
    batched = axis != 0 and all(v.batched for v in computed)
    a = axis - 1 if batched else axis
    kind = computed[0].kind if len({v.kind for v in computed}) == 1 else KIND_REAL
    # constant parts join the computed part before them (or the first one) by pad + add
    groups: list[tuple[list[np.ndarray], Value, list[np.ndarray]]] = []
    pending: list[np.ndarray] = []
    for p in parts:
        if isinstance(p, Value):
            groups.append((pending, p, []))
            pending = []
        else:
            c = np.asarray(p, dtype=np.float64)
            c = c.reshape(c.shape[1:]) if batched else c
            if groups:
                groups[-1][2].append(c)
            else:
                pending.append(c)
    if pending:  # no computed part at all cannot happen: such a node is folded
        raise b.bad(node, label, "no computed input")
    pieces: list[str] = []
    for before, v, after in groups:
        shape = v.sample if batched else v.onnx
        t = b.view(v, shape, label)
        if before or after:
            nb = sum(c.shape[a] for c in before)
            na = sum(c.shape[a] for c in after)
            pads = [(0, 0)] * len(shape)
            pads[a] = (nb, na)
            t, _ = pad_tensor(b, node, label, t, shape, pads)
            const = np.concatenate([*before, np.zeros(shape), *after], axis=a)
            if np.any(const != 0):
                t, _ = b.emit("add", [t], node, label, params={"constant": const})
        pieces.append(t)
    if len(pieces) == 1:
        t, shape = pieces[0], b.shapes[pieces[0]]
    else:
        t, shape = b.emit("concat", pieces, node, label, attrs={"axis": a})
    b.set(node, Value(t, shape, out, batched, kind))


def convert_pad(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    rank = len(x.onnx)
    pads_arr = b.const(node, 1, label, "pads") if b.opset >= 11 else None
    pads = int_list(pads_arr) if pads_arr is not None else [int(v) for v in attrs.get("pads", [])]
    value_arr = b.const(node, 2, label, "constant_value") if b.opset >= 11 else None
    value = float(np.asarray(value_arr).reshape(-1)[0]) if value_arr is not None else 0.0
    if b.opset < 11:
        value = float(attrs.get("value", 0.0))
    axes_arr = b.const(node, 3, label, "axes") if b.opset >= 18 else None
    axes = (
        list(range(rank))
        if axes_arr is None
        else [norm_axis(b, node, label, a, rank) for a in int_list(axes_arr)]
    )
    if len(pads) != 2 * len(axes):
        raise b.bad(node, label, f"pads {pads} do not fit {len(axes)} axes")
    per = {a: (pads[i], pads[i + len(axes)]) for i, a in enumerate(axes)}
    per = {a: p for a, p in per.items() if p != (0, 0)}
    if not per:
        b.set(node, x)
        return
    if x.batched and 0 in per:
        raise b.unsupported(node, label, f"it pads the batch axis ({per[0]})")
    # negative pads crop: a slice first
    crop = {a: list(range(max(-lo, 0), x.onnx[a] - max(-hi, 0))) for a, (lo, hi) in per.items()}
    if any(not k for k in crop.values()):
        raise b.unsupported(node, label, "it crops a whole axis away")
    y = take(b, node, label, x, crop)
    grow = {a: (max(lo, 0), max(hi, 0)) for a, (lo, hi) in per.items()}
    grow = {a: p for a, p in grow.items() if p != (0, 0)}
    if not grow:
        b.set(node, y)
        return
    out = tuple(d + sum(grow.get(a, (0, 0))) for a, d in enumerate(y.onnx))
    tensor, batched = b.axes_view(y, sorted(grow), label)
    shape = y.sample if batched else y.onnx
    shift = 1 if batched else 0
    if mode == "constant":
        pairs = [grow.get(a + shift, (0, 0)) for a in range(len(shape))]
        tensor, shape = pad_tensor(b, node, label, tensor, shape, pairs, value)
    elif mode in ("edge", "reflect", "wrap"):
        # a border copy is a gather along each padded axis
        for a, (lo, hi) in sorted(grow.items()):
            n = y.onnx[a]
            pos = np.arange(-lo, n + hi)
            if mode == "edge":
                idx = np.clip(pos, 0, n - 1)
            elif mode == "wrap":
                idx = np.mod(pos, n)
            else:
                if n == 1 or lo >= n or hi >= n:
                    raise b.unsupported(node, label, f"reflect padding {lo, hi} of size {n}")
                period = 2 * (n - 1)
                idx = np.mod(pos, period)
                idx = np.where(idx >= n, period - idx, idx)
            tensor, shape = gather_tensor(b, node, label, tensor, shape, a - shift, idx)
    else:
        raise b.unsupported(node, label, f"mode {mode!r}")
    b.set(node, Value(tensor, shape, out, batched, y.kind))


# -- nearest-neighbour resizing ---------------------------------------------------------------
def _nearest_index(
    b: GraphBuilder, node: onnx.NodeProto, label: str, n_in: int, n_out: int, scale: float
) -> np.ndarray:
    """The input index each output index of one axis copies (ONNX Resize, mode nearest)."""
    attrs = onnx_attrs(node)
    ctm = attrs.get(
        "coordinate_transformation_mode", b"half_pixel" if b.opset >= 11 else b"asymmetric"
    )
    ctm = ctm.decode() if isinstance(ctm, bytes) else str(ctm)
    nearest = attrs.get("nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else str(nearest)
    if node.op_type == "Upsample" or b.opset < 11:
        ctm, nearest = "asymmetric", "floor"
    o = np.arange(n_out, dtype=np.float64)
    if ctm == "half_pixel":
        x = (o + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        x = (o + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(o)
    elif ctm == "asymmetric":
        x = o / scale
    elif ctm == "align_corners":
        x = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(o)
    elif ctm == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    else:
        raise b.unsupported(node, label, f"coordinate_transformation_mode {ctm!r}")
    if nearest == "round_prefer_floor":
        idx = np.where(x - np.floor(x) == 0.5, np.floor(x), np.round(x))
    elif nearest == "round_prefer_ceil":
        idx = np.where(x - np.floor(x) == 0.5, np.ceil(x), np.round(x))
    elif nearest == "floor":
        idx = np.floor(x)
    elif nearest == "ceil":
        idx = np.ceil(x)
    else:
        raise b.unsupported(node, label, f"nearest_mode {nearest!r}")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def convert_resize(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    attrs = onnx_attrs(node)
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "nearest":
        raise b.unsupported(node, label, f"mode {mode!r} (only nearest)")
    rank = len(x.onnx)
    scales: list[float] | None = None
    sizes: list[int] | None = None
    if node.op_type == "Upsample" and "scales" in attrs:
        scales = [float(s) for s in attrs["scales"]]
    elif node.op_type == "Upsample" or b.opset < 11:
        s = b.const(node, 1, label, "scales")
        scales = None if s is None else [float(v) for v in np.asarray(s).reshape(-1)]
    else:
        s = b.const(node, 2, label, "scales")
        z = b.const(node, 3, label, "sizes")
        if s is not None and np.asarray(s).size:
            scales = [float(v) for v in np.asarray(s).reshape(-1)]
        elif z is not None:
            sizes = int_list(z)
    if "axes" in attrs:
        raise b.unsupported(node, label, "the axes attribute")
    if sizes is not None:
        if len(sizes) != rank:
            raise b.bad(node, label, f"sizes {sizes} do not fit rank {rank}")
        scales = [o / i for o, i in zip(sizes, x.onnx, strict=True)]
    if scales is None or len(scales) != rank:
        raise b.bad(node, label, f"scales {scales} do not fit rank {rank}")
    if sizes is None:
        sizes = [math.floor(d * s) for d, s in zip(x.onnx, scales, strict=True)]
    maps = {
        a: _nearest_index(b, node, label, x.onnx[a], sizes[a], scales[a])
        for a in range(rank)
        if sizes[a] != x.onnx[a] or scales[a] != 1.0
    }
    maps = {a: m for a, m in maps.items() if not np.array_equal(m, np.arange(x.onnx[a]))}
    out = tuple(len(maps[a]) if a in maps else d for a, d in enumerate(x.onnx))
    if not maps:
        b.set(node, x)
        return
    factors = {
        a: sizes[a] // x.onnx[a]
        for a, m in maps.items()
        if sizes[a] % x.onnx[a] == 0
        and np.array_equal(m, np.arange(sizes[a]) // (sizes[a] // x.onnx[a]))
    }
    if rank == 4 and set(maps) <= {2, 3} and set(factors) == set(maps):
        t = b.view(x, (x.onnx[0] * x.onnx[1], *x.onnx[2:]) if not x.batched else x.sample, label)
        t, shape = b.emit(
            "resize_nearest",
            [t],
            node,
            label,
            attrs={"scales": (factors.get(2, 1), factors.get(3, 1))},
        )
        b.set(node, Value(t, shape, out, x.batched, x.kind))
        return
    if x.batched and 0 in maps:
        raise b.unsupported(node, label, "it resizes the batch axis")
    tensor, batched = b.axes_view(x, sorted(maps), label)
    shape = x.sample if batched else x.onnx
    shift = 1 if batched else 0
    for a, m in sorted(maps.items()):
        tensor, shape = gather_tensor(b, node, label, tensor, shape, a - shift, m)
    b.set(node, Value(tensor, shape, out, batched, x.kind))


# -- convolutions ------------------------------------------------------------------------------
def _conv_input(
    b: GraphBuilder, node: onnx.NodeProto, label: str, x: Value, w: np.ndarray
) -> tuple[int, np.ndarray]:
    """The number of spatial axes (1 or 2) and the weight as 2-D (1-D kernels get height 1)."""
    spatial = w.ndim - 2
    if spatial not in (1, 2) or len(x.onnx) != w.ndim:
        raise b.unsupported(
            node,
            label,
            f"only 1-D and 2-D convolutions are supported (input {x.onnx}, weight {w.shape})",
        )
    if x.onnx[0] != 1:
        raise b.unsupported(node, label, f"input of shape {x.onnx} has batch size {x.onnx[0]}")
    return spatial, (w[:, :, None, :] if spatial == 1 else w)


def _ints_attr(attrs: dict, key: str, spatial: int, default: int) -> tuple[int, int]:
    vals = [int(v) for v in attrs.get(key, [default] * spatial)]
    return (default, vals[0]) if spatial == 1 else (vals[0], vals[1])


def _pads4(attrs: dict, spatial: int) -> list[int] | None:
    """Explicit ``pads`` as [top, left, bottom, right] (1-D: no padding of the height)."""
    if "pads" not in attrs:
        return None
    p = [int(v) for v in attrs["pads"]]
    return [0, p[0], 0, p[1]] if spatial == 1 else p


def convert_conv(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    w = b.const(node, 1, label, "weight")
    if w is None:
        raise b.bad(node, label, "missing weight")
    bias = b.const(node, 2, label, "bias")
    attrs = onnx_attrs(node)
    spatial, w4 = _conv_input(b, node, label, x, as_float(w))
    group = int(attrs.get("group", 1))
    if x.onnx[1] != w4.shape[1] * group:
        raise b.bad(node, label, f"input has {x.onnx[1]} channels, weight {w.shape}, group {group}")
    strides = _ints_attr(attrs, "strides", spatial, 1)
    dilations = _ints_attr(attrs, "dilations", spatial, 1)
    in_hw = (1, x.onnx[2]) if spatial == 1 else x.onnx[2:4]
    auto = attrs.get("auto_pad", b"NOTSET")
    if spatial == 1 and auto in (b"NOTSET", "NOTSET"):
        pads = _pads4(attrs, spatial) or [0, 0, 0, 0]
    else:
        attrs2 = {**attrs, "pads": _pads4(attrs, spatial) or [0, 0, 0, 0]}
        _, pads = _resolve_pads(attrs2, "Conv", label, in_hw, w4.shape[2:], strides, dilations)
    if min(pads) < 0:
        raise b.unsupported(node, label, f"negative padding {pads}")
    sym = (min(pads[0], pads[2]), min(pads[1], pads[3]))
    t = b.view(x, (x.onnx[1], *in_hw), label)
    shape: Shape = (x.onnx[1], *in_hw)
    extra = [(0, 0), (pads[0] - sym[0], pads[2] - sym[0]), (pads[1] - sym[1], pads[3] - sym[1])]
    t, shape = pad_tensor(b, node, label, t, shape, extra)
    b_arr = np.zeros(w4.shape[0]) if bias is None else as_float(bias).reshape(-1)
    t, shape = b.emit(
        "conv2d",
        [t],
        node,
        label,
        params={"weight": w4, "bias": b_arr},
        attrs={"stride": strides, "padding": sym, "dilation": dilations, "groups": group},
    )
    out = (1, shape[0], shape[2]) if spatial == 1 else (1, *shape)
    b.set(node, Value(t, shape, out, x.batched))
    b.mark_linear(node.output[0])


def convert_conv_transpose(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    w = b.const(node, 1, label, "weight")
    if w is None:
        raise b.bad(node, label, "missing weight")
    bias = b.const(node, 2, label, "bias")
    attrs = onnx_attrs(node)
    spatial, w4 = _conv_input(b, node, label, x, as_float(w))
    group = int(attrs.get("group", 1))
    if x.onnx[1] != w4.shape[0]:
        raise b.bad(node, label, f"input has {x.onnx[1]} channels, weight {w.shape}")
    strides = _ints_attr(attrs, "strides", spatial, 1)
    dilations = _ints_attr(attrs, "dilations", spatial, 1)
    out_pad = _ints_attr(attrs, "output_padding", spatial, 0)
    in_hw = (1, x.onnx[2]) if spatial == 1 else tuple(x.onnx[2:4])
    kernel = w4.shape[2:]
    full = [
        strides[i] * (in_hw[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
        for i in range(2)
    ]
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if "output_shape" in attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in attrs:
            target = [int(v) for v in attrs["output_shape"]][-spatial:]
            target = [1, *target] if spatial == 1 else target
        else:
            target = [in_hw[i] * strides[i] for i in range(2)]
        total = [full[i] - target[i] for i in range(2)]
        if min(total) < 0:
            raise b.unsupported(node, label, f"output_shape {target} is larger than {full}")
        upper = auto == "SAME_UPPER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        pads = [begin[0], begin[1], total[0] - begin[0], total[1] - begin[1]]
    elif auto == "VALID" or auto == "NOTSET":
        pads = (_pads4(attrs, spatial) or [0, 0, 0, 0]) if auto == "NOTSET" else [0, 0, 0, 0]
    else:
        raise b.bad(node, label, f"unknown auto_pad {auto!r}")
    if min(pads) < 0:
        raise b.unsupported(node, label, f"negative padding {pads}")
    if any(out_pad[i] >= max(strides[i], dilations[i]) for i in range(2)):
        raise b.unsupported(
            node, label, f"output_padding {out_pad} not below the stride or dilation"
        )
    sym = (min(pads[0], pads[2]), min(pads[1], pads[3]))
    b_arr = np.zeros(w4.shape[1] * group) if bias is None else as_float(bias).reshape(-1)
    t, shape = b.emit(
        "conv_transpose2d",
        [b.view(x, (x.onnx[1], *in_hw), label)],
        node,
        label,
        params={"weight": w4, "bias": b_arr},
        attrs={
            "stride": strides,
            "padding": sym,
            "output_padding": out_pad,
            "dilation": dilations,
            "groups": group,
        },
    )
    linear = True
    crop = {
        1 + i: (pads[i] - sym[i], shape[1 + i] - (pads[i + 2] - sym[i]), 1)
        for i in range(2)
        if pads[i] != pads[i + 2]
    }
    if crop:
        t, shape = slice_tensor(b, node, label, t, shape, crop)
        linear = False
    out = (1, shape[0], shape[2]) if spatial == 1 else (1, *shape)
    b.set(node, Value(t, shape, out, x.batched))
    if linear:
        b.mark_linear(node.output[0])


# -- pooling ------------------------------------------------------------------------------------
def convert_pool(b: GraphBuilder, node: onnx.NodeProto, label: str) -> None:
    x = b.computed(node, 0, label)
    op = node.op_type
    attrs = onnx_attrs(node)

    def bad_attr(attr: str, why: str) -> UnsupportedError:
        # the chain importer's wording: the attribute, its value and why
        return b.unsupported(node, label, f"attribute {attr}={attrs.get(attr)!r} {why}")

    if len(x.onnx) != 4 or x.onnx[0] != 1:
        raise b.unsupported(
            node, label, f"only 2-D pooling of (1, C, H, W) tensors is supported (got {x.onnx})"
        )
    if op == "MaxPool" and len([o for o in node.output if o]) > 1:
        raise b.unsupported(node, label, "with its Indices output: only the pooled values")
    hw = x.onnx[2:]
    auto_pad = "NOTSET"
    if op.startswith("Global"):
        kernel, strides, dilations, pads = tuple(hw), (1, 1), (1, 1), [0, 0, 0, 0]
        ceil_mode, cip = 0, 0
    else:
        if "kernel_shape" not in attrs:
            raise b.bad(node, label, "missing attribute kernel_shape")
        kernel = tuple(int(v) for v in attrs["kernel_shape"])
        if len(kernel) != 2 or min(kernel) < 1:
            raise bad_attr("kernel_shape", "(only 2-D kernels of positive size are supported)")
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        if len(strides) != 2 or min(strides) < 1:
            raise bad_attr("strides", "(expected two positive integers)")
        dilations = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
        if len(dilations) != 2 or min(dilations) < 1:
            raise bad_attr("dilations", "(expected two positive integers)")
        if op == "AveragePool" and dilations != (1, 1):
            raise bad_attr("dilations", "(dilated average pooling is not supported)")
        if op == "MaxPool" and int(attrs.get("storage_order", 0)) != 0:
            raise bad_attr("storage_order", "(only the default row-major order is supported)")
        auto_pad, pads = _resolve_pads(attrs, op, label, hw, kernel, strides, dilations)
        ceil_mode = int(attrs.get("ceil_mode", 0))
        cip = int(attrs.get("count_include_pad", 0))
    t = b.view(x, x.onnx[1:], label)
    shape: Shape = tuple(x.onnx[1:])
    if pads[0] != pads[2] or pads[1] != pads[3]:
        if op != "AveragePool" or not cip or ceil_mode:
            what = "auto_pad" if auto_pad in ("SAME_UPPER", "SAME_LOWER") else "pads"
            raise bad_attr(
                what,
                f"gives padding {pads} ([top, left, bottom, right]); only symmetric padding "
                "is supported (or counted zero padding of an average pool)",
            )
        # counted zero padding is a pad node
        t, shape = pad_tensor(
            b, node, label, t, shape, [(0, 0), (pads[0], pads[2]), (pads[1], pads[3])]
        )
        pads = [0, 0, 0, 0]
    try:
        if op in ("AveragePool", "GlobalAveragePool"):
            layer: AvgPool2d | MaxPool2d = AvgPool2d(
                kernel, strides, (pads[0], pads[1]), bool(ceil_mode), bool(cip)
            )
            name = "avgpool2d"
        else:
            layer = MaxPool2d(kernel, strides, (pads[0], pads[1]), dilations, bool(ceil_mode))
            name = "maxpool2d"
    except InputError as exc:
        raise bad_attr("pads", f"is not supported: {exc}") from None
    pool_attrs = {f.name: getattr(layer, f.name) for f in fields(layer)}
    t, shape = b.emit(name, [t], node, label, attrs=pool_attrs)
    b.set(node, Value(t, shape, (1, *shape), x.batched))


CONVERTERS: dict[str, Converter] = {
    "Concat": convert_concat,
    "Pad": convert_pad,
    "Resize": convert_resize,
    "Upsample": convert_resize,
    "Conv": convert_conv,
    "ConvTranspose": convert_conv_transpose,
    "AveragePool": convert_pool,
    "MaxPool": convert_pool,
    "GlobalAveragePool": convert_pool,
    "GlobalMaxPool": convert_pool,
}

__all__ = ["CONVERTERS"]
