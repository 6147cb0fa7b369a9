"""Import a PyTorch model into the graph IR (:class:`~nnbound.network.graph.Graph`):
residual connections, concatenated branches, slices, padding, resizing -- any ``forward``
that ``torch.fx`` can trace into supported operations.

:func:`from_torch_graph` traces the module with ``torch.fx`` (torch.nn's layers and nnbound's
own modules stay whole, custom modules are traced through) and walks the traced nodes with
the converters of :mod:`nnbound.network.torch_modules` and
:mod:`nnbound.network.torch_functions`. Every converted call is run at once on a probe batch
and compared with what torch computes from the same inputs, so a conversion that does not
reproduce one call is refused naming that call; at the end the whole graph and the module
run on a fresh random input and must agree (as :func:`~nnbound.network.from_torch.from_torch`
checks its chains). A module, function or method without a converter, or a setting the
graph operator cannot hold, raises :class:`~nnbound.errors.UnsupportedError` naming it and
the traced node.

Chains convert with :func:`~nnbound.network.from_torch.from_torch` (the chain IR, with its
fast paths); it falls back to this importer when a model is not a chain.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from nnbound.errors import InputError, NnboundError, UnsupportedError
from nnbound.network.graph import Graph
from nnbound.network.torch_checks import _check_input_shape, _eval_mode, _module_dtype_device
from nnbound.network.torch_functions import call_name, convert_call
from nnbound.network.torch_graph_builder import BATCH, GraphBuilder, Sym, contains, to_probe
from nnbound.network.torch_modules import LEAF_TYPES, convert_module

__all__ = ["from_torch_graph"]

_PROBE_BATCH = 2


class _Tracer(fx.Tracer):
    """torch.fx's tracer (torch.nn modules other than containers are leaves) that also keeps
    nnbound's own modules whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, LEAF_TYPES):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _trace(module: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(module)
    except NnboundError:
        raise
    except Exception as exc:  # tracing fails in many ways (TraceError, TypeError, ...)
        raise UnsupportedError(
            f"torch.fx cannot trace {type(module).__name__} ({_first_line(exc)}): the graph "
            "importer needs a forward without control flow that depends on the input"
        ) from None


def _check_finite(module: nn.Module) -> None:
    """InputError naming the first parameter or buffer with NaN / inf values."""
    for key, t in (*module.named_parameters(), *module.named_buffers()):
        if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
            raise InputError(f"{type(module).__name__}: {key} contains NaN or inf values")


def _random_input(
    shape: Sequence[int], input_range: tuple[float, float] | None, seed: int, like: Tensor
) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    full = (_PROBE_BATCH, *shape)
    if input_range is not None:
        lo, hi = input_range
        x = lo + (hi - lo) * torch.rand(full, generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(full, generator=gen, dtype=torch.float64)
    return x.to(device=like.device, dtype=like.dtype)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-4


def _close(got: Tensor, expected: Tensor) -> tuple[bool, float]:
    err = float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0
    scale = max(1.0, float(expected.double().abs().max())) if expected.numel() else 1.0
    return err <= _tolerance(expected.dtype) * scale, err  # NaN fails


def _checked(b: GraphBuilder, out: Any, real: Any) -> Any:
    """``out`` after comparing every :class:`Sym` in it with torch's ``real`` result; each
    then carries torch's value, so the next call is checked on exactly torch's inputs."""
    if isinstance(out, Sym):
        if not isinstance(real, Tensor) or tuple(real.shape) != (_PROBE_BATCH, *out.shape):
            got = tuple(real.shape) if isinstance(real, Tensor) else type(real).__name__
            raise UnsupportedError(
                f"{b.where}: converted to shape {(_PROBE_BATCH, *out.shape)}, torch gives {got}"
            )
        ok, err = _close(out.value, real)
        if not ok:
            raise UnsupportedError(
                f"{b.where}: the converted nodes do not reproduce torch's result (max abs "
                f"difference {err:.3g})"
            )
        out.value = real.detach()
        return out
    if isinstance(out, (tuple, list)) and contains(out, Sym):
        if not isinstance(real, (tuple, list)) or len(real) != len(out):
            raise UnsupportedError(f"{b.where}: converted to {len(out)} values, torch differs")
        return type(out)(_checked(b, o, r) for o, r in zip(out, real, strict=True))
    return out


def _attribute(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _run(b: GraphBuilder, root: nn.Module, node: fx.Node, args: Any, kwargs: Any) -> Any:
    """What the traced call computes on concrete arguments (InputError when torch refuses
    them: most often a wrong ``input_shape``)."""
    try:
        if node.op == "call_module":
            return root.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    except NnboundError:
        raise
    except Exception as exc:  # torch's own errors: shapes that do not fit, ...
        raise InputError(
            f"{b.where} fails on a batch of inputs of shape {b.input.shape}: "
            f"{_first_line(exc)} (is input_shape right?)"
        ) from None


def _convert(
    b: GraphBuilder, root: nn.Module, node: fx.Node, args: Any, kwargs: Any, real: Any
) -> Any:
    """The graph value of a traced call whose arguments depend on the input."""
    try:
        if node.op == "call_module":
            sub = root.get_submodule(str(node.target))
            return convert_module(b, sub, args, kwargs, real)
        return convert_call(b, node.target, args, kwargs, real)
    except UnsupportedError:
        raise
    except InputError as exc:  # a graph operator refusing the settings
        raise UnsupportedError(f"{b.where}: {exc}") from None
    except Exception as exc:  # arguments of a form no converter expects
        raise UnsupportedError(f"{b.where}: cannot convert ({_first_line(exc)})") from None


def _describe(root: nn.Module, node: fx.Node) -> tuple[str, str]:
    """(the torch name of a traced call, ``where`` for error messages)."""
    if node.op == "call_module":
        name = type(root.get_submodule(str(node.target))).__name__
        return name, f"node '{node.name}' ({name} at '{node.target}')"
    name = call_name(node.target)
    kind = "method" if node.op == "call_method" else "function"
    return name, f"node '{node.name}' ({kind} {name})"


def _walk(b: GraphBuilder, root: nn.Module, graph: fx.Graph) -> Any:
    """Convert the traced nodes; returns the graph value of the forward's result."""
    env: dict[fx.Node, Any] = {}
    first = True

    def load(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n])

    for node in graph.nodes:
        if node.op == "placeholder":
            if first:
                env[node] = b.input
                first = False
            elif node.args:
                env[node] = node.args[0]  # an extra forward argument with a default value
            else:
                raise UnsupportedError(
                    f"{type(root).__name__}.forward takes more than one input ({node.name!r})"
                )
            continue
        if node.op == "get_attr":
            env[node] = _attribute(root, str(node.target))
            continue
        if node.op == "output":
            return load(node.args[0])
        args, kwargs = load(node.args), load(node.kwargs)
        b.label = node.name
        b.call, b.where = _describe(root, node)
        if not contains((args, kwargs), Sym):
            if contains((args, kwargs), type(BATCH)) and node.target is not operator.getitem:
                raise UnsupportedError(f"{b.where}: arithmetic on the batch size")
            env[node] = _run(b, root, node, args, kwargs)  # constant work: run it
            continue
        real = _run(b, root, node, to_probe(args, _PROBE_BATCH), to_probe(kwargs, _PROBE_BATCH))
        env[node] = _checked(b, _convert(b, root, node, args, kwargs, real), real)
    raise UnsupportedError("the traced graph has no output")  # pragma: no cover


def _output(b: GraphBuilder, result: Any) -> Sym:
    """The forward's result as one tensor (several outputs flattened and concatenated)."""
    if isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]
    if isinstance(result, Sym):
        return result
    if isinstance(result, (tuple, list)) and result and all(isinstance(r, Sym) for r in result):
        b.label, b.where = "output", "the model's outputs"
        flat = [b.reshape(r, (r.value[0].numel(),)) for r in result]
        return b.emit("concat", flat, attrs={"axis": 0})
    raise UnsupportedError(
        f"the model returns {type(result).__name__}, not a tensor computed from its input"
    )


def _verify(module: nn.Module, graph: Graph, seed: int = 1) -> None:
    """Run ``module`` and ``graph`` on a fresh random input; UnsupportedError if they differ."""
    ref = next((t for node in graph.nodes for t in node.params.values()), None)
    like = torch.empty(0, dtype=graph.dtype, device=graph.device) if ref is None else ref
    x = _random_input(graph.input_shape, graph.input_range, seed, like)
    expected = module(x.clone())
    if isinstance(expected, (tuple, list)):
        expected = torch.cat([e.reshape(e.shape[0], -1) for e in expected], 1)
    got = graph.forward(x)
    if tuple(expected.shape) != tuple(got.shape):
        expected = expected.reshape(got.shape) if expected.numel() == got.numel() else expected
    ok, err = _close(got, expected) if tuple(expected.shape) == tuple(got.shape) else (False, 0.0)
    if not ok:
        raise UnsupportedError(
            f"the converted graph does not reproduce {type(module).__name__}.forward on a "
            f"random input (max abs difference {err:.3g}); in-place updates of a tensor that "
            "is read again, or Python state the tracer froze, are not representable"
        )


def from_torch_graph(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    name: str | None = None,
    input_range: tuple[float, float] | None = None,
) -> Graph:
    """Convert an eval-mode ``nn.Module`` into a :class:`Graph`.

    Args:
        module: any module whose ``forward`` takes one tensor and ``torch.fx`` can trace:
            residual additions, ``torch.cat`` of branches, indexing / ``chunk`` / ``split`` /
            ``narrow``, ``F.pad``, ``permute`` / ``transpose``, nearest ``interpolate``,
            ``sum`` / ``mean``, ``softmax``, products of computed tensors, constant
            arithmetic; modules Linear, Conv1d/2d, ConvTranspose2d, BatchNorm1d/2d (running
            statistics), pools, adaptive pools whose output divides the input, padding,
            Upsample (nearest), Flatten / Unflatten, Dropout / Identity and every activation
            registered in :mod:`nnbound.ops` (plus ReLU6 / Hardtanh / clamp and Hardsigmoid
            through the bounded ReLU).
        input_shape: one input's shape without the batch axis, e.g. ``(3, 32, 32)``.
        name: the graph's name (default: the module's class name).
        input_range: the data domain ``(low, high)`` of every input feature, or ``None``.

    Returns:
        The graph, with copies of the module's tensors in its dtype on its device.

    Raises:
        UnsupportedError: an operation without a converter or a graph operator (the message
            names it and the traced node), or the graph does not reproduce ``module``.
        InputError: ``input_shape`` does not fit the module, or weights hold NaN / inf.

    The module is converted in eval mode; its training flags are restored.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"from_torch_graph expects a torch.nn.Module, got {type(module).__name__}")
    shape = _check_input_shape(input_shape)
    _check_finite(module)
    dtype, device = _module_dtype_device(module)
    b = GraphBuilder(shape, dtype, device)
    like = torch.empty(0, dtype=dtype, device=device)
    with _eval_mode(module), torch.no_grad():
        traced = _trace(module)
        b.input.value = _random_input(shape, input_range, 0, like)
        out = _output(b, _walk(b, module, traced))
        if out is b.input:
            raise UnsupportedError(f"{type(module).__name__} returns its input unchanged")
        graph = Graph(
            tuple(b.nodes),
            shape,
            out.name,
            input_range=input_range,
            name=name or type(module).__name__,
            meta={"source": f"torch module {type(module).__name__} (graph)"},
        )
        kept = graph.ancestors(graph.output)
        if len(kept) != len(graph.nodes):  # drop the pieces of a split nobody reads
            graph = Graph(
                tuple(kept),
                shape,
                out.name,
                input_range=input_range,
                name=graph.name,
                meta=graph.meta,
            )
        _verify(module, graph)
    return graph
