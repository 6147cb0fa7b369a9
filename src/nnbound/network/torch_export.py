"""Import a ``torch.export`` program (``torch.export.save``, ``.pt2``) as an IR chain:
:func:`load_exported`.

The program's ``call_function`` nodes are ATen operators with schemas, so their arguments bind
to ATen names and go to :func:`nnbound.network.torch_chain_ops._apply_op`; parameters and
buffers come from the program's state dict and constants.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.network import Network
from nnbound.network.torch_chain_builder import _BatchSize, _Builder, _contains, _Value
from nnbound.network.torch_chain_ops import _apply_op, _bind
from nnbound.network.torch_checks import _check_input_shape, _first_line, _verify
from nnbound.network.torch_files import _require_file


def _walk_exported(b: _Builder, graph: fx.Graph, consts: Mapping[str, Tensor], user: str) -> None:
    """Convert the chain of ATen ``call_function`` nodes of a torch.export graph."""
    env: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node.name] = b.current if node.name == user else consts[node.name]
            continue
        if node.op == "output":
            out = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
            if not isinstance(out, _Value):
                raise UnsupportedError("the exported program must return one tensor")
            b.take(out, "output")
            continue
        if node.op != "call_function":
            raise UnsupportedError(f"node {node.name}: unsupported {node.op}")
        args = fx.node.map_arg(node.args, lambda n: env[n.name])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
        target = node.target
        where = f"node {node.name} ({target})"
        if target is operator.getitem:
            env[node.name] = args[0][args[1]]
            continue
        schema = getattr(target, "_schema", None)
        if schema is None:
            raise UnsupportedError(f"{where}: unsupported operation")
        if not _contains((args, kwargs), (_Value, _BatchSize)):
            env[node.name] = target(*args, **kwargs)
            continue
        names = [a.name for a in schema.arguments]
        kw = _bind(names, args, kwargs, where)
        if "self" in kw:
            kw["input"] = kw.pop("self")
        env[node.name] = _apply_op(b, schema.name.split("::", 1)[1], kw, where)


def load_exported(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network:
    """Convert a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``).

    The graph's ``call_function`` nodes must form a chain of supported ATen operations, either
    as exported (``aten.linear``, ``aten.conv2d``, ``aten.batch_norm``, ``aten.view``,
    ``aten.flatten``, ``aten.relu``, ``aten.tanh`` ...) or after ``run_decompositions``
    (``aten.addmm`` with ``aten.permute``/``aten.t`` of the weight, ``aten.convolution``,
    ``aten._native_batch_norm_legit_no_training``); parameters come from the program's state
    dict and constants. The input shape comes from the example input (``input_shape``, if
    given, must agree). The result is checked against ``ep.module()``.
    """
    p = _require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-internal deprecation noise while loading
            ep = torch.export.load(str(p))
    except Exception as exc:  # corrupt archives fail in many ways inside the deserializer
        raise ModelFormatError(
            f"{p}: not a readable torch.export archive ({_first_line(exc)})"
        ) from None
    sig = ep.graph_signature
    consts: dict[str, Any] = {}
    user: list[str] = []
    for spec in sig.input_specs:
        kind = spec.kind.name
        arg_name = getattr(spec.arg, "name", None)
        if kind == "USER_INPUT":
            user.append(arg_name)
        elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            if spec.target in ep.state_dict:
                consts[arg_name] = ep.state_dict[spec.target]
            elif spec.target in ep.constants:
                consts[arg_name] = ep.constants[spec.target]
            else:
                raise ModelFormatError(f"{p}: tensor {spec.target!r} missing from the archive")
        else:
            raise UnsupportedError(f"{p}: exported program input of kind {kind}")
    if len(user) != 1:
        raise UnsupportedError(f"{p}: exported program takes {len(user)} inputs, expected one")
    outputs = [s for s in sig.output_specs if s.kind.name == "USER_OUTPUT"]
    if len(outputs) != 1 or len(outputs) != len(sig.output_specs):
        raise UnsupportedError(
            f"{p}: exported program must return one tensor and mutate nothing (was it exported "
            "in training mode?)"
        )
    nodes = {n.name: n for n in ep.graph.nodes}
    val = nodes[user[0]].meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise ModelFormatError(f"{p}: the exported program records no example input shape")
    dims = list(val.shape)
    if len(dims) < 2 or not all(isinstance(d, int) for d in dims[1:]):
        raise UnsupportedError(f"{p}: example input shape {dims} must be (batch, fixed sizes...)")
    shape = tuple(int(d) for d in dims[1:])
    if input_shape is not None and _check_input_shape(input_shape) != shape:
        raise InputError(f"{p}: input_shape {tuple(input_shape)} differs from the exported {shape}")
    batch = int(dims[0]) if isinstance(dims[0], int) else None
    dtype = getattr(val, "dtype", torch.get_default_dtype())
    b = _Builder(shape, dtype, torch.device("cpu"), batch_literal=batch)
    try:
        with torch.no_grad():
            _walk_exported(b, ep.graph, consts, user[0])
    except UnsupportedError as exc:
        raise UnsupportedError(f"{p}: {exc}") from None
    net = Network(
        layers=tuple(b.layers),
        input_shape=shape,
        input_range=input_range,
        name=name or p.stem,
        meta={"source": str(p), "format": "torch.export"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = ep.module()
    _verify(module, net, f"the exported program in {p.name}", batch=batch or 2)
    return net
