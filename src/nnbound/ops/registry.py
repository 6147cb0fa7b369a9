"""The operator registry: one line per operator family.

Each family module defines ``OPS``, a tuple of :class:`~nnbound.ops.base.Op`. Adding an
operator is one file plus one line in :data:`_FAMILIES`; importers find it by its names in
ONNX / torch / Keras (:func:`by_onnx`, :func:`by_torch`, :func:`by_keras`) and the bound
engine by :func:`get_op`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nnbound.errors import UnsupportedError
from nnbound.ops import (
    add,
    argmax,
    avgpool,
    bilinear,
    bounded_relu,
    concat,
    conv,
    conv_transpose,
    convex,
    dense,
    derivative,
    exp,
    gather,
    gelu,
    gradient_product,
    hardswish,
    maxpool,
    normalize,
    pad,
    reciprocal,
    reduce,
    relu,
    reshape,
    resize,
    s_shaped,
    scale,
    slice,
    softmax,
    step,
    transpose,
)
from nnbound.ops.base import Op, RelaxOptions
from nnbound.relax.relu import LowerSlope
from nnbound.relax.s_shaped import TangentRule

if TYPE_CHECKING:
    from nnbound.network.graph import Node

_FAMILIES: tuple[tuple[Op, ...], ...] = (
    # linear
    dense.OPS,
    conv.OPS,
    avgpool.OPS,
    normalize.OPS,
    reshape.OPS,
    add.OPS,
    scale.OPS,
    concat.OPS,
    slice.OPS,
    gather.OPS,
    pad.OPS,
    transpose.OPS,
    conv_transpose.OPS,
    resize.OPS,
    reduce.OPS,
    # element-wise activations
    relu.OPS,
    bounded_relu.OPS,
    s_shaped.OPS,
    convex.OPS,
    hardswish.OPS,
    gelu.OPS,
    # relaxed from their inputs' bounds
    maxpool.OPS,
    # non-linear graph operators: products, exp / log, reciprocal, softmax, steps, selection
    bilinear.OPS,
    exp.OPS,
    reciprocal.OPS,
    softmax.OPS,
    step.OPS,
    argmax.OPS,
    # activation derivatives (gradient graphs of Jacobian bounds)
    derivative.OPS,
    gradient_product.OPS,
)

DEFAULT_OPTIONS = RelaxOptions(LowerSlope.ADAPTIVE, TangentRule.EXACT)
"""The relaxation choices of CROWN (also what interval rules of element-wise ops use: the
interval does not depend on them)."""

OPS: dict[str, Op] = {}
for _family in _FAMILIES:
    for _op in _family:
        if _op.name in OPS:
            raise RuntimeError(f"operator {_op.name!r} registered twice")
        OPS[_op.name] = _op


def get_op(name: str, node: Node | None = None) -> Op:
    """The operator registered as ``name``; an error naming it (and its node) otherwise."""
    try:
        return OPS[name]
    except KeyError:
        where = f" ({node.where})" if node is not None else ""
        raise UnsupportedError(
            f"no operator {name!r}{where}; known: {', '.join(sorted(OPS))}"
        ) from None


def _index(attr: str) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for op in OPS.values():
        for n in getattr(op.names, attr):
            out.setdefault(n, []).append(op)
    return out


_ONNX = _index("onnx")
_TORCH = _index("torch")
_KERAS = _index("keras")


def by_onnx(op_type: str) -> list[Op]:
    """Operators implementing ONNX op type ``op_type`` (empty when none)."""
    return list(_ONNX.get(op_type, ()))


def by_torch(name: str) -> list[Op]:
    """Operators with torch module / function / aten name ``name`` (empty when none)."""
    return list(_TORCH.get(name, ()))


def by_keras(name: str) -> list[Op]:
    """Operators with Keras layer or activation name ``name`` (empty when none)."""
    return list(_KERAS.get(name, ()))


__all__ = ["DEFAULT_OPTIONS", "OPS", "by_keras", "by_onnx", "by_torch", "get_op"]
