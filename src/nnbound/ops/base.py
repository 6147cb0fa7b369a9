"""What every operator of the graph IR provides: the :class:`Op` contract.

One operator family lives in one file of :mod:`nnbound.ops` and holds everything about it:
its forward map, its interval (IBP) rule, how the backward (CROWN-family) engine carries
linear coefficients through it, its derivative interval where the Jacobian bounds need one,
its traits and its names in ONNX / torch / Keras. :mod:`nnbound.ops.registry` maps names to
operators, one line each.

An operator is one of three kinds (:class:`OpKind`), which decides what the backward engine
asks of it:

* ``LINEAR``: affine in its inputs, ``y = sum_i L_i(x_i) + b``. It provides
  :meth:`Op.transpose` (``a -> [a o L_i]``, the adjoint of each linear part, never a dense
  matrix for a conv: convex_adversarial's forward / transpose contract) and :meth:`Op.bias`.
* ``ELEMENTWISE``: one input, applied per entry (activations). It provides
  :meth:`Op.relaxation`, an object mapping input bounds to two sandwiching lines
  (:class:`~nnbound.relax.base.Relaxation`); the engine picks each line by the sign of the
  coefficient it multiplies.
* ``RELAXED``: anything else that needs its inputs' bounds (max pooling, products of two
  computed tensors, softmax, ...). It provides :meth:`Op.backward`, which maps the lower- and
  upper-bound coefficients on its output to coefficients on each input plus constants, from
  sound linear bounds of the operator over its inputs' box.

Coefficients have shape ``(N, S, *shape)``: ``N`` input-set rows, ``S`` bounded quantities
(spec rows), then the tensor's own shape without the batch axis. Forward inputs have shape
``(B, *shape)``; interval bounds ``(N, *shape)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from nnbound.errors import UnsupportedError

if TYPE_CHECKING:
    from nnbound.network.graph import Node, Shape
    from nnbound.relax.base import Relaxation
    from nnbound.relax.relu import LowerSlope
    from nnbound.relax.s_shaped import TangentRule

Interval = tuple[Tensor, Tensor]
"""Element-wise ``(lower, upper)`` bounds of one tensor, each ``(N, *shape)``."""


class OpKind(enum.Enum):
    """What the backward engine asks of an operator (see the module docstring)."""

    LINEAR = "linear"
    ELEMENTWISE = "elementwise"
    RELAXED = "relaxed"


@dataclass(frozen=True)
class Traits:
    """Facts about an operator that bound methods rely on.

    Attributes:
        piecewise_linear: stable entries relax exactly whatever their bounds (ReLU): only
            entries whose input interval contains a kink need tight input bounds.
        kinks: where a piecewise-linear element-wise operator changes slope.
        monotone: non-decreasing in every input, so the interval of the output is the image of
            the input box's two corners (and a backward pass to it gains nothing over IBP).
        lipschitz: a Lipschitz constant of an element-wise operator (per entry), ``None`` when
            it has none (step functions) or depends on parameters (see :meth:`Op.lipschitz`).
        smooth: differentiable everywhere (Jacobian bounds need a derivative interval).
    """

    piecewise_linear: bool = False
    kinks: tuple[float, ...] = ()
    monotone: bool = False
    lipschitz: float | None = None
    smooth: bool = False


@dataclass(frozen=True)
class Names:
    """The names an operator has in other frameworks (importers look them up here).

    Attributes:
        onnx: ONNX op types this operator implements (alone or with attributes the ONNX
            importer maps).
        torch: ``torch.nn`` module class names, ``torch.nn.functional`` / ``torch`` function
            names and ``aten`` op names (without the ``aten.`` prefix and overload).
        keras: Keras layer class names or activation names.
    """

    onnx: tuple[str, ...] = ()
    torch: tuple[str, ...] = ()
    keras: tuple[str, ...] = ()


@dataclass(frozen=True)
class RelaxOptions:
    """Typed relaxation choices a bound method makes (parsed once at the edge).

    Attributes:
        relu_lower: the lower line of an unstable ReLU-family neuron.
        tangent: the S-shaped tangent rule.
    """

    relu_lower: LowerSlope
    tangent: TangentRule


@dataclass(frozen=True)
class Backward:
    """Coefficients a ``RELAXED`` operator hands to its inputs, and the constants it adds.

    ``lower[i]`` / ``upper[i]`` are the coefficients on input ``i`` of the lower / upper bound
    (``(N, S, *in_shape_i)``, ``None`` where that side is not computed or the input gets
    nothing); ``const_lower`` / ``const_upper`` are ``(N, S)`` (or ``None``).
    """

    lower: list[Tensor | None]
    upper: list[Tensor | None]
    const_lower: Tensor | None = None
    const_upper: Tensor | None = None


@dataclass(frozen=True)
class Op:
    """An operator: subclass per family and override the methods of its kind.

    Attributes:
        name: the registry name (what :attr:`Node.op` holds).
        kind: see :class:`OpKind`.
        traits: see :class:`Traits`.
        names: see :class:`Names`.
    """

    name: str
    kind: OpKind
    traits: Traits = field(default_factory=Traits)
    names: Names = field(default_factory=Names)

    # -- every kind ----------------------------------------------------------------------
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        """The output shape from the input shapes; raises InputError when they do not fit."""
        raise NotImplementedError

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        """The output for batched inputs ``(B, *in_shape_i)`` (differentiable)."""
        raise NotImplementedError

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        """Sound element-wise bounds of the output from bounds of every input."""
        raise NotImplementedError

    def summary(self, node: Node) -> str:
        """A short description, e.g. ``dense(784 -> 100)``."""
        return self.name

    # -- LINEAR --------------------------------------------------------------------------
    def transpose(
        self, node: Node, a: Tensor, in_shapes: list[Shape], out_shape: Shape
    ) -> list[Tensor | None]:
        """Coefficients ``a`` (``(N, S, *out_shape)``) carried to each input: ``a o L_i``
        (``(N, S, *in_shapes[i])``)."""
        raise NotImplementedError

    def bias(self, node: Node, out_shape: Shape) -> Tensor | None:
        """The constant ``b`` (broadcastable to ``out_shape``), or ``None``."""
        return None

    # -- ELEMENTWISE ---------------------------------------------------------------------
    def relaxation(self, node: Node, options: RelaxOptions) -> Relaxation:
        """The relaxation object (lines, interval, derivative interval on ``[l, u]``)."""
        raise NotImplementedError

    def lipschitz(self, node: Node) -> float | None:
        """A Lipschitz constant of the element-wise map (``traits.lipschitz`` by default)."""
        return self.traits.lipschitz

    # -- RELAXED -------------------------------------------------------------------------
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
        """Coefficients on the output (``(N, S, *out_shape)`` for the lower and the upper
        bound; either may be ``None``) carried to the inputs, from input ``bounds``."""
        raise NotImplementedError

    # -- checks ---------------------------------------------------------------------------
    def unsupported(self, node: Node, what: str) -> UnsupportedError:
        """An error naming this operator and its node."""
        return UnsupportedError(f"{node.where}: {what}")


__all__ = ["Backward", "Interval", "Names", "Op", "OpKind", "RelaxOptions", "Traits"]
