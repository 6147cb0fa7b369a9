"""What every PyTorch importer does around a conversion: check the input shape, convert in
eval mode with the module's dtype and device, and finally run the network and the original
model on the same random input (:func:`_verify`).

That last check is why a conversion that silently dropped part of a ``forward`` becomes an
UnsupportedError rather than a wrong network. The graph importer
(:mod:`nnbound.network.from_torch_graph`) shares the preparation helpers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nnbound.errors import InputError, NnboundError, UnsupportedError
from nnbound.network.layers import Shape
from nnbound.network.network import Network


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (the IR is the inference-time network), then restore the
    caller's per-module training flags."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in (*module.parameters(), *module.buffers()):
        if torch.is_floating_point(t):
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def _check_input_shape(input_shape: Any) -> Shape:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input_shape must be a tuple of integers, got {input_shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"input_shape must be non-empty with positive sizes, got {shape}")
    return shape


def _verify(
    run: Callable[[Tensor], Any],
    net: Network,
    what: str,
    batch: int = 2,
    notes: Sequence[str] = (),
) -> None:
    """Run the original model and ``net`` on the same random batch; raise UnsupportedError
    if they disagree (the converted chain is not what the model computes)."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, *net.input_shape)
    if net.input_range is not None:
        lo, hi = net.input_range
        x = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x.to(device=net.device, dtype=net.dtype)
    with torch.no_grad():
        try:
            expected = run(x)
        except NnboundError:
            raise
        except Exception as exc:
            raise InputError(
                f"{what} fails on an input of shape {shape}: {_first_line(exc)} (is input_shape "
                "right?)"
            ) from None
        got = net.forward(x)
    if isinstance(expected, (tuple, list)) and len(expected) == 1:
        expected = expected[0]
    if not isinstance(expected, Tensor):
        raise UnsupportedError(f"{what} returns {type(expected).__name__}, not one tensor")
    if tuple(expected.shape) != tuple(got.shape):
        raise UnsupportedError(
            f"the converted network's output shape {tuple(got.shape)} differs from {what}'s "
            f"{tuple(expected.shape)}"
        )
    err = float((expected.double() - got.double()).abs().max())
    scale = max(1.0, float(expected.double().abs().max()))
    tol = 1e-9 if net.dtype == torch.float64 else 1e-4
    if not err <= tol * scale:  # also catches NaN
        raise UnsupportedError(
            f"the converted network does not reproduce {what} (max abs difference {err:.3g}); "
            "only chains of supported layers whose forward runs them in order are supported"
            + "".join(f"; {n}" for n in notes)
        )
