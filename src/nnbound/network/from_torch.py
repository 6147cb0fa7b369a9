"""Import PyTorch models into the network IR.

Four ways in:

* :func:`from_torch` -- a live ``nn.Module`` (``nn.Sequential`` trees, or a module whose
  ``forward`` is a straight chain that ``torch.fx`` can trace).
* :func:`load_torchscript` -- a TorchScript archive written by ``torch.jit.save`` (the archive
  holds TorchScript code and tensors, no Python pickle code).
* :func:`load_exported` -- a ``torch.export`` program written by ``torch.export.save`` (``.pt2``).
* :func:`load_state_dict` -- just the tensors of a state dict; a state dict has no architecture,
  so it must be paired with an ``nn.Module`` and :func:`from_torch`.

All importers end the same way: the IR network and the original model run on the same random
input and must agree. A conversion that silently dropped part of a ``forward`` (an extra
``x * 2``, a skip connection the children order cannot show, ...) therefore becomes an
:class:`~nnbound.errors.UnsupportedError`, never a wrong network.

The IR is a chain, so every importer accepts only chains: one input, one output, and every
operation consumes the result of the operation before it. Element-wise affine maps
(``BatchNorm`` in eval mode, ``x - c``, ``x / c``, ``x * c``, ``x + c``) are folded into the
preceding ``Linear``/``Conv2d``, or become a :class:`~nnbound.network.layers.Normalize` layer when
they act on the input (nothing but reshapes and ``Normalize`` before them); anywhere else (e.g.
right after an activation) they are rejected.

This module holds :func:`from_torch` and re-exports the file loaders; the pieces live in
sibling modules so each stays small: the chain state (:mod:`~nnbound.network.torch_chain_builder`),
the ATen operation converters (:mod:`~nnbound.network.torch_chain_ops`), ``nn.Module`` and
``torch.fx`` walking (:mod:`~nnbound.network.torch_chain_modules`), the shared preparation and
final check (:mod:`~nnbound.network.torch_checks`), archives and state dicts
(:mod:`~nnbound.network.torch_files`), TorchScript (:mod:`~nnbound.network.torch_torchscript`)
and torch.export (:mod:`~nnbound.network.torch_export`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnbound.errors import InputError
from nnbound.network.graph import Graph
from nnbound.network.network import Network
from nnbound.network.torch_chain_builder import _Builder, _NotAChain
from nnbound.network.torch_chain_modules import _convert_module
from nnbound.network.torch_checks import (
    _check_input_shape,
    _eval_mode,
    _module_dtype_device,
    _verify,
)
from nnbound.network.torch_export import load_exported
from nnbound.network.torch_files import load_state_dict, torch_archive_kind
from nnbound.network.torch_torchscript import load_torchscript

__all__ = [
    "from_torch",
    "load_exported",
    "load_state_dict",
    "load_torchscript",
    "torch_archive_kind",
]


def from_torch(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network | Graph:
    """Convert an eval-mode ``nn.Module`` into a :class:`Network` (a :class:`Graph` when its
    ``forward`` is not a chain: see :func:`~nnbound.network.from_torch_graph.from_torch_graph`).

    Args:
        module: an ``nn.Sequential`` (nested Sequentials are flattened) or a module whose
            ``forward`` is a chain: ``torch.fx`` traces it, and ``call_module`` nodes plus
            ``torch.flatten``, ``x.view(x.size(0), -1)``, ``x.view(-1, N)``, ``reshape``,
            ``F.relu``/``torch.relu``/``torch.tanh``/``torch.sigmoid``/``F.leaky_relu``/``F.elu``
            and element-wise constant arithmetic are understood. A module that ``torch.fx``
            cannot trace is read as its children in registration order (inserting a Flatten
            before a Linear that receives an image); that guess is then checked.
            ``torch.clamp``/``clip``/``F.hardtanh``/``F.relu6`` with bounds ``[0, c]`` (the
            bounded ReLU) are understood.
            Supported modules: Linear, Conv2d (zero padding), Flatten, Unflatten, ReLU,
            LeakyReLU, Tanh, Sigmoid, Softplus (beta=1, threshold=20), ELU, ReLU6 /
            Hardtanh(0, c) (the bounded ReLU), Identity, Dropout
            (skipped), BatchNorm1d/2d (running statistics; folded into the preceding
            Linear/Conv2d, or a Normalize layer when acting on the input) and nnbound's own
            NormalizeModule/ReshapeModule/Arctan; AvgPool2d (no divisor_override), MaxPool2d
            (no return_indices), AdaptiveAvgPool2d / AdaptiveMaxPool2d whose output size
            divides the input size (a fixed pooling), and in traced code ``F.avg_pool2d``,
            ``F.max_pool2d``, the adaptive pools and ``mean`` over the two spatial axes.
        input_shape: shape of one input without the batch axis, e.g. ``(1, 28, 28)``.
        input_range: the data domain ``(low, high)`` of every input feature, or ``None``.
        name: network name (default: the module's class name).

    Returns:
        The network; its tensors are copies in the module's dtype (the first floating
        parameter's), on the module's device. A module with branches or skip connections
        (a tensor read twice, two computed tensors combined) comes back as a :class:`Graph`.

    Raises:
        UnsupportedError: a module or operation nnbound cannot represent (the message names
            it), or the converted network does not reproduce ``module`` on a random input.
        InputError: ``input_shape`` does not fit the module, or weights contain NaN/inf.

    The module is converted (and checked) in eval mode; its training flags are restored.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    shape = _check_input_shape(input_shape)
    dtype, device = _module_dtype_device(module)
    b = _Builder(shape, dtype, device, batch_literal=None)
    with _eval_mode(module), torch.no_grad():
        try:
            _convert_module(b, module, "")
        except _NotAChain:
            # residual / branching forward: the graph IR holds it (the graph importer runs
            # its own checks and names what it cannot convert)
            from nnbound.network.from_torch_graph import from_torch_graph

            return from_torch_graph(module, shape, name=name, input_range=input_range)
        net = Network(
            layers=tuple(b.layers),
            input_shape=shape,
            input_range=input_range,
            name=name or type(module).__name__,
            meta={"source": f"torch module {type(module).__name__}"},
        )
        _verify(module, net, f"{type(module).__name__}.forward", notes=b.notes)
    return net
