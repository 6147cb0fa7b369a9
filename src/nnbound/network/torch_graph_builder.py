"""The state of a PyTorch -> graph conversion (:mod:`nnbound.network.from_torch_graph`).

A traced ``forward`` is walked node by node. A value that depends on the model input is a
:class:`Sym`: the name of a graph tensor, its per-sample shape (no batch axis) and its value
on a small probe batch. Everything else (parameters, shapes, Python numbers) is a plain value
and is computed as it is. The batch size is the one integer that depends on the input: reading
it (``x.size(0)``, ``x.shape[0]``) gives :data:`BATCH`, which may only be handed back to a
reshape.

:class:`GraphBuilder` appends graph nodes. Each node is run at once on its inputs' probe
values, so a converter reads exact shapes and the walker can compare every converted torch
call with what torch computes on the same probe values (an error then names the call that
went wrong instead of a final mismatch somewhere in a ResNet).

It also holds what the converters share (:data:`Converter`, :func:`registrar`, :func:`bind`,
:func:`need_sym`): the module converters live in :mod:`nnbound.network.torch_modules`, the
call converters in :mod:`nnbound.network.torch_functions` and
:mod:`nnbound.network.torch_shapes`, the layer emitters both use in
:mod:`nnbound.network.torch_layers`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError
from nnbound.network.graph import Node, Shape
from nnbound.ops.registry import get_op


class Sym:
    """A tensor that depends on the model input.

    Attributes:
        name: the graph tensor holding it.
        shape: its shape without the batch axis.
        value: its value on the probe batch, ``(B, *shape)``.
    """

    __slots__ = ("name", "shape", "value")

    def __init__(self, name: str, shape: Shape, value: Tensor) -> None:
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.value = value

    @property
    def rank(self) -> int:
        """Per-sample rank (the batched tensor has one more axis)."""
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<tensor {self.name} {self.shape}>"


class _Batch:
    """The batch size of the input (see the module docstring)."""

    def __repr__(self) -> str:
        return "<batch size>"


BATCH = _Batch()


def contains(obj: Any, cls: type | tuple[type, ...]) -> bool:
    """Whether ``obj`` or anything in its lists / tuples / dicts is a ``cls``."""
    if isinstance(obj, cls):
        return True
    if isinstance(obj, (list, tuple)):
        return any(contains(o, cls) for o in obj)
    if isinstance(obj, Mapping):
        return any(contains(o, cls) for o in obj.values())
    return False


def to_probe(obj: Any, batch: int) -> Any:
    """``obj`` with every :class:`Sym` replaced by a copy of its probe value and
    :data:`BATCH` by the probe batch size (what the original torch call receives; a copy, so
    an in-place call cannot change what later calls read)."""
    if isinstance(obj, Sym):
        return obj.value.clone()
    if obj is BATCH:
        return batch
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_probe(o, batch) for o in obj)
    if isinstance(obj, list):
        return [to_probe(o, batch) for o in obj]
    if isinstance(obj, dict):
        return {k: to_probe(v, batch) for k, v in obj.items()}
    return obj


def axis(dim: Any, rank: int, where: str) -> int:
    """Torch dimension ``dim`` of a batched tensor with per-sample rank ``rank`` as a
    per-sample axis (``0 .. rank - 1``); the batch axis is refused."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise UnsupportedError(f"{where}: dimension {dim!r} is not a constant integer")
    d = dim + rank + 1 if dim < 0 else dim
    if not 0 <= d <= rank:
        raise UnsupportedError(f"{where}: dimension {dim} out of range for rank {rank + 1}")
    if d == 0:
        raise UnsupportedError(f"{where}: operates along the batch axis")
    return d - 1


class GraphBuilder:
    """Collects graph nodes for one conversion.

    Attributes:
        dtype, device: of every parameter (the module's).
        nodes: the nodes so far, in topological order.
        input: the graph input.
        label: the traced node being converted (graph node labels).
        call: the torch name of its call (``add``, ``view``, ``Conv2d``).
        where: the traced node and its call, prefixing error messages.
    """

    def __init__(self, input_shape: Shape, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        self.nodes: list[Node] = []
        self.label = ""
        self.call = ""
        self.where = ""
        self._names: set[str] = {"input"}
        self.input = Sym("input", input_shape, torch.empty(0))

    # -- constants ------------------------------------------------------------------------
    def const(self, value: Any, what: str) -> Tensor:
        """``value`` (a tensor or a number) as a detached float copy in the graph's dtype."""
        if isinstance(value, Sym):
            raise UnsupportedError(
                f"{self.where}: {what} must be a constant, got a tensor that depends on the input"
            )
        if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
            raise UnsupportedError(
                f"{self.where}: {what} must be a constant number or tensor, got "
                f"{type(value).__name__}"
            )
        t = torch.as_tensor(value)
        if t.is_complex():
            raise UnsupportedError(f"{self.where}: {what} is complex")
        return t.detach().to(device=self.device, dtype=self.dtype).clone()

    def per_sample(self, c: Tensor, rank: int, what: str) -> Tensor:
        """A constant operand of a batched tensor of per-sample rank ``rank`` without its
        batch axis (it must be 1 there: a constant that differs per sample is no constant of
        the per-sample graph)."""
        if c.dim() <= rank:
            return c
        extra = c.dim() - rank
        if extra > 1 or c.shape[0] != 1:
            raise UnsupportedError(
                f"{self.where}: {what} of shape {tuple(c.shape)} varies along the batch axis"
            )
        return c[0]

    # -- nodes ----------------------------------------------------------------------------
    def _fresh(self) -> str:
        base = self.label or "t"
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def emit(
        self,
        op: str,
        inputs: Sequence[Sym],
        params: Mapping[str, Tensor] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> Sym:
        """Append node ``op(inputs)`` and return its output (shape and probe value)."""
        node = Node(
            op, tuple(s.name for s in inputs), self._fresh(), params or {}, attrs or {}, self.label
        )
        try:
            spec = get_op(op, node)
        except UnsupportedError as exc:  # an operator not (yet) in the registry
            raise UnsupportedError(f"{self.where}: {exc}") from None
        try:
            shape = spec.out_shape(node, [s.shape for s in inputs])
        except InputError as exc:
            raise UnsupportedError(f"{self.where}: {exc}") from None
        with torch.no_grad():
            value = spec.forward(node, *(s.value for s in inputs))
        self.nodes.append(node)
        return Sym(node.output, shape, value)

    def reshape(self, x: Sym, shape: Sequence[int]) -> Sym:
        """``x`` reshaped to per-sample ``shape`` (no node when it already has it)."""
        shape = tuple(int(s) for s in shape)
        if shape == x.shape:
            return x
        if len(shape) == 1:
            return self.emit("flatten", [x])
        return self.emit("reshape", [x], attrs={"shape": shape})

    def scale(self, x: Sym, scale: Tensor | None = None, shift: Tensor | None = None) -> Sym:
        """``x * scale + shift`` with constants broadcast against ``x``."""
        params = {}
        if scale is not None:
            params["scale"] = scale
        if shift is not None:
            params["shift"] = shift
        return self.emit("scale", [x], params)


# -- converters -----------------------------------------------------------------------------
Converter = Callable[[GraphBuilder, tuple[Any, ...], dict[str, Any], Any], Any]
"""``(builder, args, kwargs, real) -> value``: converts one torch call whose arguments hold a
:class:`Sym` (``real``: what torch returns for the probe values)."""


def registrar(table: dict[str, Converter]) -> Callable[..., Callable[[Converter], Converter]]:
    """A decorator factory filing a converter in ``table`` under each of its torch names."""

    def register(*names: str) -> Callable[[Converter], Converter]:
        def deco(f: Converter) -> Converter:
            for n in names:
                table[n] = f
            return f

        return deco

    return register


def bind(
    b: GraphBuilder,
    names: Sequence[str],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Positional ``args`` and ``kwargs`` by argument ``names`` (``self`` is ``input``)."""
    if len(args) > len(names):
        raise UnsupportedError(f"{b.where}: unexpected extra arguments {tuple(args)[len(names) :]}")
    kw = dict(defaults or {})
    kw.update(zip(names, args, strict=False))
    for k, v in kwargs.items():
        k = "input" if k == "self" else k
        if k not in names:
            raise UnsupportedError(f"{b.where}: unexpected argument {k}={v!r}")
        kw[k] = v
    return kw


def need_sym(b: GraphBuilder, v: Any, what: str = "input") -> Sym:
    """``v`` when it is a tensor computed from the input; UnsupportedError otherwise."""
    if not isinstance(v, Sym):
        raise UnsupportedError(f"{b.where}: {what} must be a tensor computed from the input")
    return v


def varargs(args: Sequence[Any]) -> list[Any]:
    """``f(x, 1, 2)`` or ``f(x, (1, 2))`` -> ``[1, 2]`` (view, permute, ...)."""
    rest = list(args[1:])
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        return list(rest[0])
    return rest


__all__ = [
    "BATCH",
    "Converter",
    "GraphBuilder",
    "Sym",
    "axis",
    "bind",
    "contains",
    "need_sym",
    "registrar",
    "to_probe",
    "varargs",
]
