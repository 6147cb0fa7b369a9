"""Structural linear blocks of a Jacobian chain: a run of IR linear layers applied as layers.

A chain factor ``M`` (see :mod:`nnbound.jacobian.recurjac`) is either a dense tensor or a
:class:`BlockOp`: the sequence of linear IR layers between two activations (a conv, with
Flatten / Reshape / Normalize / pooling around it), applied with the layers' own
``forward_linear`` (``M x``) and ``transpose`` (``y M``, a ``conv_transpose`` for a conv), so a
CIFAR-size conv never becomes a dense ``(out, in)`` matrix. Biases never enter: a Jacobian only
sees the linear part.

What the Jacobian algorithms need of a factor, and how a block gives it:

* ``M x`` and ``y M``: the layers' ``forward_linear`` / ``transpose`` (exact);
* the columns ``M e_j`` (RecurJac starts one functional per entry): ``forward_linear`` of a
  chunk of identity rows, so only a chunk of the dense matrix exists at a time;
* ``y |M|`` for ``y >= 0`` (interval products ``[lo, hi] M = mid M +- rad |M|``): the same
  layers with ``|W|`` (``dataclasses.replace(layer, weight=layer.weight.abs())``; Normalize is
  ``diag(1/std)``, so ``|.|`` is ``diag(1/|std|)``; Flatten, Reshape and average pooling are
  nonnegative maps and stay as they are). ``|A B| <= |A| |B|`` entry-wise, so this is always a
  sound upper bound of ``y |M|``; it is exact when at most one layer of the block is not a
  monomial map (a permutation times a diagonal: Flatten, Reshape, Normalize), which is every
  "Normalize / conv / Flatten / Dense" block. A block with two mixing layers (a pool and a
  conv, or two convs without an activation between them) gets a looser interval product than
  the dense fold would; :func:`nnbound.jacobian.chain.build_chain` folds such a block densely
  whenever it is small enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from nnbound.errors import UnsupportedError
from nnbound.network.layers import Flatten, Normalize, Reshape, Shape

# Layers that are monomial maps (each row and column has at most one nonzero entry): |.| of a
# product with them is the product of the |.|, so they never loosen the structural |M|.
_MONOMIAL = (Flatten, Reshape, Normalize)
# Weightless layers known to be nonnegative linear maps (|M| = M), by class name so that this
# module does not depend on which pooling layers the IR holds.
_NONNEGATIVE_NAMES = ("Flatten", "Reshape", "AvgPool2d")


def abs_layer(layer: object) -> object:
    """The layer whose linear part is the entry-wise ``|.|`` of ``layer``'s linear part."""
    if isinstance(layer, Normalize):
        return replace(layer, std=layer.std.abs())
    names = {f.name for f in fields(layer)} if hasattr(layer, "__dataclass_fields__") else set()
    if "weight" in names:
        return replace(layer, weight=layer.weight.abs())  # type: ignore[attr-defined]
    if type(layer).__name__ in _NONNEGATIVE_NAMES or getattr(layer, "jacobian_selector", False):
        return layer
    raise UnsupportedError(
        f"Jacobian bounds do not know the sign structure of layer {type(layer).__name__}"
    )


def is_mixing(layer: object) -> bool:
    """Whether ``layer`` is not a monomial map (it sums several inputs into one output).

    The max-pool selectors (:mod:`nnbound.jacobian.maxpool`) only ever sit at a block's edge,
    where they never loosen ``|W|``, and count as not mixing."""
    return not (isinstance(layer, _MONOMIAL) or getattr(layer, "jacobian_selector", False))


@dataclass(frozen=True, eq=False)
class BlockOp:
    """The linear map ``M`` ``(out, in)`` of ``layers`` (biases dropped), or its transpose.

    Attributes:
        layers: the linear IR layers, in forward order.
        shapes: ``shapes[i]`` the input shape of ``layers[i]``, ``shapes[-1]`` the output shape.
        dtype, device: of the vectors it maps (the network's).
        transposed: this op stands for ``M^T`` instead of ``M``.
    """

    layers: tuple[object, ...]
    shapes: tuple[Shape, ...]
    dtype: torch.dtype
    device: torch.device
    transposed: bool = False

    @property
    def in_size(self) -> int:
        """Columns of the matrix this op stands for."""
        return math.prod(self.shapes[-1] if self.transposed else self.shapes[0])

    @property
    def out_size(self) -> int:
        """Rows of the matrix this op stands for."""
        return math.prod(self.shapes[0] if self.transposed else self.shapes[-1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_size, in_size)``, as the dense matrix's ``shape``."""
        return (self.out_size, self.in_size)

    @property
    def exact_abs(self) -> bool:
        """Whether :meth:`abs_rmatmul` is exactly ``y |M|`` (at most one mixing layer)."""
        return sum(is_mixing(layer) for layer in self.layers) <= 1

    def t(self) -> BlockOp:
        """The op of the transposed matrix (no data is copied)."""
        return replace(self, transposed=not self.transposed)

    # -- the matrix this op stands for ----------------------------------------------------
    def matvec(self, x: Tensor) -> Tensor:
        """``M x`` for every vector ``x`` ``(..., in_size)`` -> ``(..., out_size)``."""
        return self._transpose(x, self.layers) if self.transposed else self._forward(x)

    def rmatmul(self, y: Tensor) -> Tensor:
        """``y M`` for every row ``y`` ``(..., out_size)`` -> ``(..., in_size)``."""
        return self._forward(y) if self.transposed else self._transpose(y, self.layers)

    def abs_rmatmul(self, y: Tensor) -> Tensor:
        """An entry-wise upper bound of ``y |M|`` for ``y >= 0`` (exact if :attr:`exact_abs`)."""
        layers = tuple(abs_layer(layer) for layer in self.layers)
        if self.transposed:
            return replace(self, layers=layers, transposed=False).matvec(y)
        return self._transpose(y, layers)

    def columns(self, start: int, stop: int) -> Tensor:
        """``(stop - start, out_size)``: row t is ``M e_{start + t}`` (a column of M)."""
        eye = torch.zeros(stop - start, self.in_size, dtype=self.dtype, device=self.device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        return self.matvec(eye)

    def dense(self) -> Tensor:
        """The dense ``(out_size, in_size)`` matrix (only for what has to be materialised)."""
        return self.columns(0, self.in_size).T.contiguous()

    # -- the layers ----------------------------------------------------------------------
    def _forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        a = x.reshape(-1, *self.shapes[0])
        for layer in self.layers:
            a = layer.forward_linear(a)  # type: ignore[attr-defined]
        return a.reshape(*lead, -1)

    def _transpose(self, y: Tensor, layers: tuple[object, ...]) -> Tensor:
        lead = y.shape[:-1]
        a = y.reshape(-1, *self.shapes[-1])
        for layer, shape in zip(reversed(layers), reversed(self.shapes[:-1]), strict=True):
            a = layer.transpose(a, shape)  # type: ignore[attr-defined]
        return a.reshape(*lead, -1)


def check_linear(layer: object) -> None:
    """Refuse a layer a structural block cannot hold (no ``forward_linear`` / ``transpose``)."""
    if not (hasattr(layer, "forward_linear") and hasattr(layer, "transpose")):
        raise UnsupportedError(
            f"Jacobian bounds do not support layer {type(layer).__name__} between activations"
        )
