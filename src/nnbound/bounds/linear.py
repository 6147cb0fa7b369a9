"""The one backward pass behind Fast-Lin, CROWN and CROWN-general.

A linear bound of spec rows ``A_out . y`` (y the output of layer ``end - 1``) is carried back
layer by layer to the input: through a linear layer by its transpose (plus its bias), through an
activation by the relaxation's lines, choosing per entry the upper line where the coefficient is
positive for the upper bound (the lower line where it is negative), and the other way round for
the lower bound. At the input the input set concretizes ``A . x + const`` (``||A||_q * eps``).
The methods differ only in the relaxations they pass in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nnbound.network.layers import Activation, Conv2d, Dense, Layer, MaxPool2d, Shape
from nnbound.relax.base import LinearRelaxation
from nnbound.relax.maxpool import MaxPoolLines, maxpool_backward
from nnbound.sets.box import InputSet


def _contract(a: Tensor, b: Tensor) -> Tensor:
    """Sum of ``a * b`` over the trailing axes of ``b`` (``b`` broadcasts over ``a``'s leading
    axes): the constant a linear form picks up from a bias or an intercept."""
    prod = a * b
    return prod.reshape(*prod.shape[:2], -1).sum(-1)


def backward_linear_bounds(
    layers: tuple[Layer, ...],
    shapes: list[Shape],
    end: int,
    a: Tensor,
    const: Tensor,
    lines: dict[int, LinearRelaxation | MaxPoolLines],
    ball: InputSet,
    *,
    lower: bool = True,
    upper: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Bounds of ``a . y_end + const`` where ``y_end`` is the output of ``layers[end - 1]``.

    Args:
        layers, shapes: the network's layers and ``shapes[i]`` = input shape of layer i.
        end: how many layers the spec sits on top of.
        a: ``(N, S, *shapes[end])`` spec coefficients (one row block per ball row).
        const: ``(N, S)`` constant added to the spec.
        lines: for each activation layer index below ``end``, its relaxation lines
            (tensors ``(N, *shape)``); for each max pool, its window lines
            (:class:`~nnbound.relax.maxpool.MaxPoolLines`).
        ball: the input set (N rows).
        lower, upper: which side(s) to compute (the other is returned as None).

    Returns:
        ``(lower, upper)``, each ``(N, S)`` or None.
    """
    a_lo = a if lower else None
    a_up = a if upper else None
    c_lo = const if lower else None
    c_up = const if upper else None
    # Flat columns (N, K') the coefficients currently hold when an activation dropped the
    # neurons whose lines are both flat zero (dead ReLUs): the Dense layer below then
    # multiplies by just those rows of its weight.
    cols: Tensor | None = None
    for i in range(end - 1, -1, -1):
        layer = layers[i]
        if isinstance(layer, Activation):
            rl = lines[i]
            rows = (a_lo if a_lo is not None else a_up).shape[1]  # type: ignore[union-attr]
            if (
                i > 0
                and isinstance(layers[i - 1], Dense)
                and len(shapes[i]) == 1
                and rows >= _COMPRESS_MIN_ROWS
            ):
                rl, cols = _drop_dead_columns(rl)
                if cols is not None:
                    same = a_lo is a_up
                    a_lo = _take_columns(a_lo, cols)
                    a_up = a_lo if same else _take_columns(a_up, cols)
            a_lo, c_lo, a_up, c_up = through_lines(a_lo, c_lo, a_up, c_up, rl)
        elif isinstance(layer, MaxPool2d):
            # Per window x_j <= y <= slope * x_j + bias (nnbound.relax.maxpool); each side
            # picks the line its coefficient's sign needs.
            pl = lines[i]
            assert isinstance(pl, MaxPoolLines)
            same = a_lo is a_up
            if a_up is not None and c_up is not None:
                new_up, shift = maxpool_backward(a_up, pl, shapes[i], upper=True)
                c_up = c_up + shift
            if a_lo is not None and c_lo is not None:
                a_lo, shift = maxpool_backward(a_lo, pl, shapes[i], upper=False)
                c_lo = c_lo + shift
            if a_up is not None:
                a_up = new_up
            elif same:
                a_up = a_lo
        else:
            same = a_lo is a_up
            weight = None
            if cols is not None:
                assert isinstance(layer, Dense)
                bias: Tensor | None = _rows_of(layer.bias, cols).unsqueeze(1)  # (N, 1, K')
                weight = _rows_of(layer.weight, cols)  # (N, K', in)
                cols = None
            else:
                bias = layer.bias_map(shapes[i + 1])
            if bias is not None:
                shift_up = _contract(a_up, bias) if a_up is not None else None
                if c_up is not None and shift_up is not None:
                    c_up = c_up + shift_up
                if c_lo is not None and a_lo is not None:
                    shift_lo = shift_up if same and shift_up is not None else _contract(a_lo, bias)
                    c_lo = c_lo + shift_lo
            # Fast-Lin's lines share one slope, so both sides often hold the same coefficients:
            # one product then serves both.
            a_up = _transpose(layer, a_up, shapes[i], weight)
            a_lo = a_up if same else _transpose(layer, a_lo, shapes[i], weight)
    out_lo = ball.concretize(a_lo, c_lo)[0] if a_lo is not None else None
    out_up = ball.concretize(a_up, c_up)[1] if a_up is not None else None
    return out_lo, out_up


# Compress an activation's columns when the widest row keeps at most this fraction of them,
# and the spec has at least this many rows: gathering the weight rows copies the weight once
# per ball row, which only pays when enough rows share it (a 9-row final pass ran faster as
# one shared-weight product).
_COMPRESS_BELOW = 0.85
_COMPRESS_MIN_ROWS = 64


def padded_indices(mask: Tensor) -> Tensor:
    """Per row, the flat indices where ``mask`` (``(N, M)``) is true, padded to the largest
    count by repeating the row's first index (0 for an empty row): ``(N, U)``.

    Padding repeats a real index so that scattering results back writes the same value twice,
    never a stale one over a fresh one.
    """
    counts = mask.sum(1)
    u = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :u]
    valid = torch.arange(u, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return torch.where(valid, order, order[:, :1])


def _drop_dead_columns(rl: LinearRelaxation) -> tuple[LinearRelaxation, Tensor | None]:
    """The lines restricted to the neurons that contribute anything, and their flat indices.

    A neuron whose two lines are both ``0 * z + 0`` (a ReLU proved inactive) adds nothing to
    a bound, so its column, and the matching row of the Dense weight below, can be skipped.
    Rows are padded to the widest row; a padded slot gets all-zero lines, so it contributes
    exactly nothing whatever index it repeats. Returns ``(rl, None)`` when too few neurons
    are dead for the gathers to pay.
    """
    tensors = (rl.lower_slope, rl.lower_bias, rl.upper_slope, rl.upper_bias)
    live = (tensors[0] != 0) | (tensors[1] != 0) | (tensors[2] != 0) | (tensors[3] != 0)
    counts = live.sum(1)
    width = int(counts.max()) if live.numel() else 0
    if width > _COMPRESS_BELOW * live.shape[1]:
        return rl, None
    cols = padded_indices(live)
    valid = torch.arange(width, device=live.device).unsqueeze(0) < counts.unsqueeze(1)
    zero = torch.zeros((), dtype=tensors[0].dtype, device=live.device)
    ls, lb, us, ub = (torch.where(valid, t.gather(1, cols), zero) for t in tensors)
    return LinearRelaxation(ls, lb, us, ub), cols


def _take_columns(a: Tensor | None, cols: Tensor) -> Tensor | None:
    """``a[n, s, cols[n, k]]`` for ``a`` ``(N, S, K)`` and ``cols`` ``(N, K')``."""
    if a is None:
        return None
    return a.gather(2, cols.unsqueeze(1).expand(-1, a.shape[1], -1))


def through_lines(
    a_lo: Tensor | None,
    c_lo: Tensor | None,
    a_up: Tensor | None,
    c_up: Tensor | None,
    rl: LinearRelaxation,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Carry the coefficients back through an activation's lines.

    The upper bound takes the upper line where a coefficient is positive and the lower line
    elsewhere: ``a * where(a > 0, us, ls) = a * ls + max(a, 0) * (us - ls)`` (and the same for
    the intercepts); the lower bound the other way round. Written with ``max(a, 0)`` rather
    than a broadcast ``where`` because it is several times faster on CPU, and one
    ``max(a, 0)`` serves both sides when they share ``a``.
    """
    ref = a_lo if a_lo is not None else a_up
    assert ref is not None
    # Lines are (N, *shape), shared by every spec row, or (N, S, *shape) per row (alpha).
    per_row = rl.lower_slope.dim() == ref.dim()
    ls, lb, us, ub = (
        t if per_row else t.unsqueeze(1)
        for t in (rl.lower_slope, rl.lower_bias, rl.upper_slope, rl.upper_bias)
    )
    same = a_lo is a_up
    gap_s, gap_b = us - ls, ub - lb
    lower_bias_zero = not bool(lb.any())  # ReLU: its lower line goes through the origin
    pos_up = None
    new_up = None
    if a_up is not None and c_up is not None:
        pos_up = a_up.clamp(min=0)
        shift = _contract(pos_up, gap_b)
        c_up = c_up + shift if lower_bias_zero else c_up + shift + _contract(a_up, lb)
        new_up = torch.addcmul(a_up * ls, pos_up, gap_s)
    if a_lo is not None and c_lo is not None:
        pos_lo = pos_up if same and pos_up is not None else a_lo.clamp(min=0)
        c_lo = c_lo + _contract(a_lo, ub) - _contract(pos_lo, gap_b)
        if same and new_up is not None and not bool(gap_s.any()):
            a_lo = new_up  # equal slopes (Fast-Lin): both sides keep sharing one tensor
        else:
            a_lo = torch.addcmul(a_lo * us, pos_lo, gap_s, value=-1.0)
    return a_lo, c_lo, new_up, c_up


def _transpose(
    layer: Layer, a: Tensor | None, in_shape: Shape, rows: Tensor | None
) -> Tensor | None:
    """``a`` carried back through linear ``layer``; ``rows`` (``(N, K', in)``), when given, are
    the Dense weight rows of the columns ``a`` kept (see :func:`_drop_dead_columns`)."""
    if a is None:
        return None
    if rows is not None:
        return torch.bmm(a, rows)
    return layer.transpose(a, in_shape)  # type: ignore[union-attr]


def _rows_of(t: Tensor, idx: Tensor) -> Tensor:
    """``t[idx]`` for an integer index of any shape; ``index_select`` on the flattened index is
    several times faster than advanced indexing on CPU."""
    return t.index_select(0, idx.reshape(-1)).reshape(*idx.shape, *t.shape[1:])


def start_rows(
    layers: tuple[Layer, ...], shapes: list[Shape], end: int, idx: Tensor, dtype, device
) -> tuple[Tensor, Tensor, int]:
    """Spec rows selecting neurons ``idx`` (``(N, U)`` flat indices) of the output of
    ``layers[end - 1]``, already carried through that layer when it is Dense (a row gather
    instead of a one-hot matrix product) or Conv2d (the kernel written at the neuron's
    receptive field instead of a transposed convolution of a one-hot image). Returns
    ``(a, const, new_end)``."""
    n, u = idx.shape
    last = layers[end - 1]
    if isinstance(last, Dense):
        a = _rows_of(last.weight, idx)  # (N, U, in)
        const = _rows_of(last.bias, idx)
        return a, const, end - 1
    if isinstance(last, Conv2d):
        a = _conv_rows(last, shapes[end - 1], shapes[end], idx)
        return a, _rows_of(last.bias, idx // math.prod(shapes[end][1:])), end - 1
    size = math.prod(shapes[end])
    a = torch.zeros(n, u, size, dtype=dtype, device=device)
    a.scatter_(2, idx.unsqueeze(-1), 1.0)
    return a.reshape(n, u, *shapes[end]), torch.zeros(n, u, dtype=dtype, device=device), end


def _conv_rows(conv: Conv2d, in_shape: Shape, out_shape: Shape, idx: Tensor) -> Tensor:
    """Row ``(o, y, x)`` of a convolution's matrix for each flat output index in ``idx``
    (``(N, U)``): ``(N, U, *in_shape)``.

    Output ``(o, y, x)`` reads input ``(c, y*s - p + i*d, x*s - p + j*d)`` with weight
    ``w[o, c - group_start, i, j]`` for the channels ``c`` of ``o``'s group. Within one row
    these positions are distinct, so adding the taps into zeros writes each once; taps that
    fall in the padding add a zero at position 0, which changes nothing.
    """
    n, u = idx.shape
    c_out, h_out, w_out = out_shape
    _, h_in, w_in = in_shape
    per_group, kh, kw = conv.weight.shape[1:]
    (sy, sx), (py, px), (dy, dx) = conv.stride, conv.padding, conv.dilation
    dev = idx.device
    o = idx // (h_out * w_out)
    y = idx % (h_out * w_out) // w_out
    x = idx % w_out
    group = o // (c_out // conv.groups)
    chan = group.unsqueeze(-1) * per_group + torch.arange(per_group, device=dev)  # (N, U, G)
    iy = y.unsqueeze(-1) * sy - py + torch.arange(kh, device=dev) * dy  # (N, U, kh)
    ix = x.unsqueeze(-1) * sx - px + torch.arange(kw, device=dev) * dx  # (N, U, kw)
    valid = ((iy >= 0) & (iy < h_in)).unsqueeze(-1) & ((ix >= 0) & (ix < w_in)).unsqueeze(-2)
    pos = (
        chan[..., :, None, None] * (h_in * w_in)
        + iy[..., None, :, None] * w_in
        + ix[..., None, None, :]
    )  # (N, U, G, kh, kw)
    valid = valid.unsqueeze(2).expand_as(pos)
    taps = _rows_of(conv.weight, o)  # (N, U, G, kh, kw)
    taps = torch.where(valid, taps, torch.zeros((), dtype=taps.dtype, device=dev))
    pos = torch.where(valid, pos, torch.zeros((), dtype=pos.dtype, device=dev))
    a = torch.zeros(n, u, math.prod(in_shape), dtype=conv.weight.dtype, device=dev)
    a.scatter_add_(2, pos.reshape(n, u, -1), taps.reshape(n, u, -1))
    return a.reshape(n, u, *in_shape)
