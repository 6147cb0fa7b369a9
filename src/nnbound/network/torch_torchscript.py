"""Import a TorchScript archive (``torch.jit.save``) as an IR chain: :func:`load_torchscript`.

The archive is frozen and its graph walked node by node: ``prim::`` nodes (constants,
attributes, lists, tuples, constant ``if``) are evaluated, ATen operations on constants are
run, and ATen operations on the running activation go to
:func:`nnbound.network.torch_chain_ops._apply_op`.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.network import Network
from nnbound.network.torch_chain_builder import _BatchSize, _Builder, _contains, _Value, _where
from nnbound.network.torch_chain_ops import _apply_op, _bind
from nnbound.network.torch_checks import _check_input_shape, _first_line, _verify
from nnbound.network.torch_files import _require_file

_TS_KNOWN = frozenset(
    {
        "Sequential",
        "Linear",
        "Conv2d",
        "Flatten",
        "Unflatten",
        "ReLU",
        "LeakyReLU",
        "Tanh",
        "Sigmoid",
        "Softplus",
        "ELU",
        "Hardtanh",
        "ReLU6",
        "Identity",
        "AvgPool2d",
        "MaxPool2d",
        "AdaptiveAvgPool2d",
        "AdaptiveMaxPool2d",
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "AlphaDropout",
        "BatchNorm1d",
        "BatchNorm2d",
        "NormalizeModule",
        "ReshapeModule",
        "Arctan",
    }
)


def _aten_call(kind: str, schema: str | None, args: list[Any]) -> Any:
    """Run an ATen operation of a TorchScript graph on constant arguments."""
    base = kind.split("::", 1)[1]
    packet = getattr(torch.ops.aten, base)
    if schema:
        overload = torch._C.parse_schema(schema).overload_name or "default"
        with contextlib.suppress(AttributeError):
            return getattr(packet, overload)(*args)
    return packet(*args)


_TS_CASTS = frozenset(
    {
        "prim::NumToTensor",
        "aten::Int",
        "aten::IntImplicit",
        "aten::ScalarImplicit",
        "aten::Float",
        "aten::FloatImplicit",
        "aten::Bool",
    }
)


def _ts_cast(kind: str, value: Any) -> Any:
    if isinstance(value, (_BatchSize, _Value)) or kind == "prim::NumToTensor":
        return value  # the batch size stays symbolic whatever its Python type
    if kind == "aten::ScalarImplicit":
        return value.item()
    if "Float" in kind:
        return float(value)
    if kind == "aten::Bool":
        return bool(value)
    return int(value)


def _walk_ts_nodes(b: _Builder, nodes: Any, env: dict[str, Any]) -> None:
    """Convert TorchScript graph nodes in order; ``env`` maps value names to what they hold:
    constants, the module (``self``), the running activation or the batch size."""
    for node in nodes:
        kind = node.kind()
        where = f"TorchScript node {kind}"
        args = [env[v.debugName()] for v in node.inputs()]
        outs = list(node.outputs())
        if kind == "prim::Constant":
            value: Any = outs[0].toIValue() if node.hasAttributes() else None
        elif kind == "prim::GetAttr":
            value = getattr(args[0], node.s("name"))
        elif kind == "prim::ListConstruct":
            value = list(args)
        elif kind == "prim::TupleConstruct":
            value = tuple(args)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            value = tuple(args[0])
        elif kind in ("prim::TupleIndex", "aten::__getitem__"):
            value = args[0][int(args[1])]
        elif kind in _TS_CASTS:
            value = _ts_cast(kind, args[0])
        elif kind == "prim::If":
            # Frozen modules keep shape checks (`if x.dim() != 2: raise ...`); with the shapes
            # known, the condition is a constant and the taken branch is walked inline.
            cond = args[0]
            if not isinstance(cond, bool):
                raise UnsupportedError(f"{where}: control flow that depends on the input")
            block = list(node.blocks())[0 if cond else 1]
            _walk_ts_nodes(b, block.nodes(), env)
            value = tuple(env[v.debugName()] for v in block.outputs())
        elif kind == "prim::RaiseException":
            raise InputError(f"the TorchScript module raises on this input: {args[0]}")
        elif kind.startswith("aten::"):
            schema = node.schema()
            schema = None if schema == "(no schema)" else schema
            if not _contains(args, _Value):
                if _contains(args, _BatchSize):
                    raise UnsupportedError(f"{where}: arithmetic on the batch size")
                value = _aten_call(kind, schema, args)
            else:
                if schema is None:
                    raise UnsupportedError(f"{where}: unsupported operation")
                names = [a.name for a in torch._C.parse_schema(schema).arguments]
                kw = _bind(names, args, {}, where)
                if "self" in kw:
                    kw["input"] = kw.pop("self")
                value = _apply_op(b, kind.split("::", 1)[1], kw, where)
        else:
            raise UnsupportedError(f"{where}: unsupported operation")
        if len(outs) == 1 and not (kind == "prim::If" or kind.endswith("Unpack")):
            env[outs[0].debugName()] = value
        elif outs:
            if not isinstance(value, (tuple, list)) or len(value) != len(outs):
                raise UnsupportedError(f"{where}: unsupported multi-output operation")
            for out, v in zip(outs, value, strict=True):
                env[out.debugName()] = v


def _walk_torchscript(b: _Builder, graph: Any, module: Any) -> None:
    inputs = list(graph.inputs())
    if len(inputs) != 2:
        raise UnsupportedError(f"TorchScript forward takes {len(inputs) - 1} inputs, expected one")
    env: dict[str, Any] = {inputs[0].debugName(): module, inputs[1].debugName(): b.current}
    _walk_ts_nodes(b, graph.nodes(), env)
    results = [env[v.debugName()] for v in graph.outputs()]
    if len(results) != 1 or not isinstance(results[0], _Value):
        raise UnsupportedError("TorchScript forward must return one tensor")
    b.take(results[0], "TorchScript output")


def _unknown_ts_modules(m: Any) -> list[str]:
    """Leaf submodules of a TorchScript archive that nnbound does not know (for messages)."""
    found = []
    for qual, sub in m.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        if kind not in _TS_KNOWN and not any(True for _ in sub.children()):
            found.append(f"{kind} at {_where(qual)}")
    return found


def load_torchscript(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network:
    """Convert a TorchScript archive (``torch.jit.save`` of a scripted or traced module).

    The archive is loaded with ``torch.jit.load(path, map_location="cpu")`` (TorchScript code
    and tensors, no Python pickle code), frozen in eval mode, and its graph -- a chain of ATen
    operations (``linear``, ``conv2d``, ``relu``, ``view``, ``flatten``, ``batch_norm`` ...) --
    is converted; the result is checked against the archive's own forward.

    Args:
        path: the archive.
        input_shape: one input's shape without the batch axis. Required unless the archive
            stores it, as a JSON extra file ``nnbound.json`` (``{"input_shape": [...]}``,
            written with ``torch.jit.save(m, path, _extra_files=...)``) or as a tuple
            attribute ``input_shape`` of the scripted module.
        input_range: data domain ``(low, high)``; default the stored one, else ``None``.
        name: network name (default: the file's stem).
    """
    p = _require_file(path)
    extra = {"nnbound.json": ""}
    try:
        with warnings.catch_warnings():
            # torch marks the TorchScript API deprecated; loading a user's archive is still
            # the point here, so that warning is not the user's concern.
            warnings.simplefilter("ignore")
            m = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # RuntimeError for bad archives, others for truncated files
        raise ModelFormatError(
            f"{p}: not a readable TorchScript archive ({_first_line(exc)})"
        ) from None
    stored: dict[str, Any] = {}
    if extra["nnbound.json"]:
        try:
            stored = json.loads(extra["nnbound.json"])
        except (json.JSONDecodeError, TypeError):
            raise ModelFormatError(f"{p}: extra file nnbound.json is not JSON") from None
    if input_shape is None:
        input_shape = stored.get("input_shape")
    if input_shape is None:
        with contextlib.suppress(AttributeError, RuntimeError):
            attr = m.input_shape
            if isinstance(attr, (tuple, list)):
                input_shape = attr
    if input_shape is None:
        raise InputError(
            f"{p}: a TorchScript archive does not record its input shape; pass input_shape"
        )
    if input_range is None and stored.get("input_range") is not None:
        input_range = tuple(stored["input_range"])
    shape = _check_input_shape(input_shape)
    m.eval()
    dtype = torch.get_default_dtype()
    for t in (*m.parameters(), *m.buffers()):
        if torch.is_floating_point(t):
            dtype = t.dtype
            break
    b = _Builder(shape, dtype, torch.device("cpu"), batch_literal=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(m)
        graph = frozen.graph
        owner: Any = frozen
    except Exception:  # freezing can fail on exotic modules; walk the unfrozen graph
        graph, owner = m.inlined_graph, m
    try:
        with torch.no_grad():
            _walk_torchscript(b, graph, owner)
    except UnsupportedError as exc:
        unknown = _unknown_ts_modules(m)
        hint = f" (the archive contains {', '.join(unknown)})" if unknown else ""
        raise UnsupportedError(f"{p}: {exc}{hint}") from None
    net = Network(
        layers=tuple(b.layers),
        input_shape=shape,
        input_range=input_range,
        name=name or p.stem,
        meta={"source": str(p), "format": "torchscript"},
    )
    _verify(m, net, f"the TorchScript module in {p.name}")
    return net
