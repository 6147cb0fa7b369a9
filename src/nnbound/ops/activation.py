"""The element-wise activation contract shared by the activation families.

An :class:`ActivationOp` is an ``ELEMENTWISE`` operator: a torch function and a relaxation
object (:mod:`nnbound.relax`) that gives sound lines, the output interval and the derivative
interval on ``[l, u]``. Node attrs: ``alpha`` where the family has a parameter (the leaky
slope, the ELU scale, the bounded ReLU's cap). A family file defines its ops with
:func:`activation_op` and lists them in ``OPS``.

Everything else that names an activation asks its op, so one family file (plus its line in
:mod:`nnbound.ops.registry`) is all a new activation needs:

* the chain IR's :class:`~nnbound.network.layers.Activation` (which names exist, the
  parameter's default and checks, the forward function), the CROWN / IBP relaxation
  (:func:`nnbound.relax.registry.relaxation_for`), spectral bounds (:meth:`lipschitz_at`),
  the Jacobian bounds (the relaxation's ``derivative_interval``, :attr:`derivative_range`);
* importers find it by name (``names``) and read its parameter and settings with
  :meth:`ActivationOp.read_settings` from its :class:`Spelling` in that framework;
* exporters write it with :meth:`ActivationOp.onnx_node` and :meth:`ActivationOp.module`.

A parameterless activation whose torch module lives in ``torch.nn`` and whose ONNX operator
takes no attributes needs none of the optional fields.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Node, Shape
from nnbound.ops.base import Interval, Names, Op, OpKind, RelaxOptions, Traits
from nnbound.relax.base import Relaxation

if TYPE_CHECKING:
    from torch import nn

_IGNORED_SETTINGS = frozenset({"input", "self", "inplace", "training"})
"""Settings that never change what an activation computes (torch's in-place flag, a module's
training mode, the input itself)."""


@dataclass(frozen=True)
class Spelling:
    """How one framework spells an activation's settings (ONNX node attributes, torch module
    attributes or call keywords, Keras layer config keys).

    Attributes:
        alpha: the setting that holds the parameter (``None``: the framework has none).
        alpha_default: the parameter when that setting is absent (the framework's default;
            for Keras also what a bare activation name means); ``None``: absent is refused.
        fixed: ``(setting, value)`` pairs: every other setting that changes the function,
            with the only value that computes this activation. An absent one is taken at the
            framework's default, which must then be that value, unless it is in
            ``explicit``.
        explicit: fixed settings whose framework default differs: they must be present.
    """

    alpha: str | None = None
    alpha_default: float | None = None
    fixed: tuple[tuple[str, Any], ...] = ()
    explicit: tuple[str, ...] = ()


@dataclass(frozen=True)
class OnnxNode:
    """One ONNX node computing an activation from its input.

    Attributes:
        op_type: the ONNX operator (default domain).
        attrs: ``(name, value)`` attributes.
        constants: scalar constant inputs after the data input (``Clip``'s min and max from
            opset 11 on).
    """

    op_type: str
    attrs: tuple[tuple[str, Any], ...] = ()
    constants: tuple[float, ...] = ()


def _signature_defaults(fn: Any) -> dict[str, Any]:
    """The keyword defaults of ``fn`` (empty where Python cannot see them: C builtins)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _onnx_defaults(op_type: str) -> dict[str, Any]:
    """The attribute defaults of ONNX operator ``op_type`` (newest opset)."""
    import onnx

    try:
        schema = onnx.defs.get_schema(op_type)
    except onnx.defs.SchemaError:
        return {}
    out = {}
    for name, attr in schema.attributes.items():
        if attr.default_value.type:
            value = onnx.helper.get_attribute_value(attr.default_value)
            out[name] = value.decode("utf-8") if isinstance(value, bytes) else value
    return out


def _same(value: Any, wanted: Any) -> bool:
    try:
        return bool(value == wanted)
    except (TypeError, ValueError, RuntimeError):
        return False


@dataclass(frozen=True)
class ActivationOp(Op):
    """An element-wise activation.

    Attributes:
        function: ``alpha -> f`` (the torch function for the node's parameter).
        make_relaxation: ``(alpha, options) -> Relaxation``; raises UnsupportedError for a
            parameter it cannot relax soundly.
        default_alpha: the parameter when the node has none.
        alpha_label: what summaries call the parameter (``"alpha"``, ``"cap"``); ``None``
            for an activation without one (its ``alpha`` is ignored).
        zero_alpha_is_default: the chain IR reads ``alpha == 0`` as ``default_alpha`` (its
            records default ``alpha`` to 0).
        check_alpha: raises InputError for a parameter the function is not defined for.
        lipschitz_of: ``alpha -> `` a Lipschitz constant (``traits.lipschitz`` otherwise).
        derivative_range: ``alpha -> (lo, hi)``: the derivative's range over the whole real
            line when every interval ``[lo, hi]`` of it is attained (piecewise-linear
            activations); ``None`` otherwise. A Jacobian bound whose derivative intervals
            cover it holds globally.
        onnx_emit: ``(alpha, opset) -> OnnxNode`` when the default (``names.onnx[0]`` with
            the parameter in ``onnx_settings.alpha``) is not how ONNX writes it.
        torch_module: ``alpha -> nn.Module`` when the default (the first ``torch.nn`` class
            in ``names.torch``, given the parameter and the explicit settings as keywords) is
            not how torch writes it.
        onnx_settings, torch_settings, keras_settings: see :class:`Spelling`.
    """

    function: Callable[[float], Callable[[Tensor], Tensor]] | None = None
    make_relaxation: Callable[[float, RelaxOptions], Relaxation] | None = None
    default_alpha: float = 0.0
    alpha_label: str | None = None
    zero_alpha_is_default: bool = False
    check_alpha: Callable[[float], None] | None = None
    lipschitz_of: Callable[[float], float] | None = None
    derivative_range: Callable[[float], tuple[float, float]] | None = None
    onnx_emit: Callable[[float, int], OnnxNode] | None = None
    torch_module: Callable[[float], nn.Module] | None = None
    onnx_settings: Spelling = field(default_factory=Spelling)
    torch_settings: Spelling = field(default_factory=Spelling)
    keras_settings: Spelling = field(default_factory=Spelling)

    def __post_init__(self) -> None:
        # one Spelling object passed for two frameworks: keep them apart (framework_defaults
        # tells them by identity)
        if self.torch_settings is self.onnx_settings:
            object.__setattr__(self, "torch_settings", replace(self.torch_settings))
        if self.keras_settings in (self.onnx_settings, self.torch_settings):
            object.__setattr__(self, "keras_settings", replace(self.keras_settings))

    # -- the parameter ----------------------------------------------------------------------
    @property
    def has_alpha(self) -> bool:
        """Whether the activation has a parameter (``alpha`` means something)."""
        return self.alpha_label is not None

    def alpha(self, node: Node) -> float:
        return float(node.attrs.get("alpha", self.default_alpha))

    def normalize_alpha(self, alpha: float) -> float:
        """The chain IR's ``alpha`` (0 read as the default where the family says so)."""
        if self.zero_alpha_is_default and alpha == 0.0:
            return self.default_alpha
        return float(alpha)

    def lipschitz_at(self, alpha: float) -> float | None:
        """A Lipschitz constant of the activation with parameter ``alpha`` (``None``: none)."""
        if self.lipschitz_of is not None:
            return float(self.lipschitz_of(alpha))
        return self.traits.lipschitz

    def relaxation_at(self, alpha: float, options: RelaxOptions) -> Relaxation:
        """The relaxation for parameter ``alpha`` (UnsupportedError where none is sound)."""
        assert self.make_relaxation is not None
        return self.make_relaxation(alpha, options)

    # -- Op ---------------------------------------------------------------------------------
    def out_shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        if len(in_shapes) != 1:
            raise InputError(f"{self.name} takes one input, got {len(in_shapes)}")
        return in_shapes[0]

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        assert self.function is not None
        return self.function(self.alpha(node))(xs[0])

    def relaxation(self, node: Node, options: RelaxOptions) -> Relaxation:
        try:
            return self.relaxation_at(self.alpha(node), options)
        except (InputError, UnsupportedError) as exc:
            raise type(exc)(f"{node.where}: {exc}") from None

    def interval(self, node: Node, bounds: list[Interval]) -> Interval:
        from nnbound.ops.registry import DEFAULT_OPTIONS

        return self.relaxation(node, DEFAULT_OPTIONS).interval(*bounds[0])

    def lipschitz(self, node: Node) -> float | None:
        return self.lipschitz_at(self.alpha(node))

    def summary(self, node: Node) -> str:
        return f"{self.name}(alpha={self.alpha(node):g})" if "alpha" in node.attrs else self.name

    # -- importers --------------------------------------------------------------------------
    def framework_defaults(self, spelling: Spelling) -> dict[str, Any]:
        """The framework's own defaults of its settings (``spelling`` is one of this op's):
        ONNX schema attribute defaults of ``names.onnx``; torch keyword defaults of the op's
        module class and of the ``torch.nn.functional`` functions in ``names.torch``."""
        out: dict[str, Any] = {}
        if spelling is self.onnx_settings:
            for op_type in self.names.onnx:
                out = {**_onnx_defaults(op_type), **out}
        elif spelling is self.torch_settings:
            import torch.nn.functional as F

            for name in self.names.torch:
                fn = getattr(F, name, None)
                if callable(fn) and not isinstance(fn, type):
                    out = {**_signature_defaults(fn), **out}
            with contextlib.suppress(UnsupportedError):  # no torch module
                out = {**out, **_signature_defaults(type(self.module(self.default_alpha)))}
        return out

    def read_settings(
        self,
        spelling: Spelling,
        settings: Mapping[str, Any],
        what: str,
        defaults: Mapping[str, Any] | None = None,
    ) -> float:
        """The parameter of a framework's ``what`` (an ONNX node, a torch module or call)
        with ``settings``; UnsupportedError for a setting that makes it another function.

        A setting is accepted when it is the parameter (``spelling.alpha``), when it has the
        value ``spelling.fixed`` asks, or when it is not in ``spelling.fixed`` and has the
        framework's default value (``defaults``, by default :meth:`framework_defaults`):
        naming a framework's operator says its default form computes this activation.
        """
        fixed = dict(spelling.fixed)
        if defaults is None:
            defaults = self.framework_defaults(spelling)
        alpha: float | None = None
        for key, value in settings.items():
            if key in _IGNORED_SETTINGS or key.startswith("_"):
                continue
            if isinstance(value, bytes):  # ONNX string attributes come back as bytes
                value = value.decode("utf-8", "replace")
            if key == spelling.alpha:
                alpha = float(value)
            elif key in fixed:
                if not _same(value, fixed[key]):
                    raise UnsupportedError(
                        f"{what} with {key}={value!r}: nnbound's {self.name} computes only "
                        f"{key}={fixed[key]!r}"
                    )
            elif key in defaults:
                if not _same(value, defaults[key]):
                    raise UnsupportedError(
                        f"{what} with {key}={value!r}: nnbound's {self.name} computes only "
                        f"the default {key}={defaults[key]!r}"
                    )
            else:
                raise UnsupportedError(
                    f"{what} with {key}={value!r}: nnbound's {self.name} has no such setting"
                )
        for key in spelling.explicit:
            if key not in settings:
                raise UnsupportedError(
                    f"{what} without {key}: nnbound's {self.name} needs {key}={fixed[key]!r}"
                )
        if alpha is None:
            if not self.has_alpha:
                return self.default_alpha
            if spelling.alpha_default is None:
                raise UnsupportedError(f"{what} without its parameter {spelling.alpha!r}")
            alpha = spelling.alpha_default
        return alpha

    # -- exporters --------------------------------------------------------------------------
    def onnx_node(self, alpha: float, opset: int) -> OnnxNode:
        """The ONNX node computing the activation with parameter ``alpha`` (UnsupportedError
        when ONNX has none)."""
        if self.onnx_emit is not None:
            return self.onnx_emit(alpha, opset)
        if not self.names.onnx:
            raise UnsupportedError(f"activation {self.name} has no ONNX operator")
        attrs: tuple[tuple[str, Any], ...] = ()
        if self.has_alpha:
            if self.onnx_settings.alpha is None:
                raise UnsupportedError(
                    f"activation {self.name}: ONNX {self.names.onnx[0]} has no parameter"
                )
            attrs = ((self.onnx_settings.alpha, float(alpha)),)
        return OnnxNode(self.names.onnx[0], attrs)

    def module(self, alpha: float) -> nn.Module:
        """A torch module computing the activation with parameter ``alpha``."""
        if self.torch_module is not None:
            return self.torch_module(alpha)
        from torch import nn

        spelling = self.torch_settings
        kwargs = {key: value for key, value in spelling.fixed if key in spelling.explicit}
        if self.has_alpha and spelling.alpha is not None:
            kwargs[spelling.alpha] = alpha
        for name in self.names.torch:
            cls = getattr(nn, name, None)
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                return cls(**kwargs)
        raise UnsupportedError(f"activation {self.name} has no torch module")


def activation_op(
    name: str,
    function: Callable[[float], Callable[[Tensor], Tensor]],
    make_relaxation: Callable[[float, RelaxOptions], Relaxation],
    traits: Traits,
    names: Names,
    default_alpha: float = 0.0,
    **options: Any,
) -> ActivationOp:
    """An :class:`ActivationOp` (a family file's one-liner per activation); ``options`` are
    the optional :class:`ActivationOp` fields (``alpha_label``, ``torch_settings``, ...)."""
    return ActivationOp(
        name,
        OpKind.ELEMENTWISE,
        traits=traits,
        names=names,
        function=function,
        make_relaxation=make_relaxation,
        default_alpha=default_alpha,
        **options,
    )


__all__ = ["ActivationOp", "OnnxNode", "Spelling", "activation_op"]
