"""The network IR: an ordered tuple of layer records plus what a user must know about inputs."""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.network.layers import (
    LINEAR_TYPES,
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Layer,
    MaxPool2d,
    Reshape,
    Shape,
)

# Tensors already found finite, by id: (a weak reference to the tensor, its version then).
# Networks are rebuilt around the same weights often (prefixes, dtype copies, replaced names);
# scanning a 1024x1024 weight again costs ~0.4 ms. An in-place change bumps the version, so
# a changed tensor is scanned again.
_FINITE: dict[int, tuple[weakref.ref[Tensor], int]] = {}


def _finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite (scanned once per tensor and version)."""
    if t.is_inference():  # inference-mode tensors keep no version counter: scan each time
        return bool(torch.isfinite(t).all())
    seen = _FINITE.get(id(t))
    if seen is not None and seen[0]() is t and seen[1] == t._version:
        return True
    if not bool(torch.isfinite(t).all()):
        return False
    if seen is None or seen[0]() is not t:
        weakref.finalize(t, _FINITE.pop, id(t), None)
    _FINITE[id(t)] = (weakref.ref(t), t._version)
    return True


@dataclass(frozen=True, eq=False)
class Network:
    """A feed-forward network: ``layers`` applied in order to an input of ``input_shape``.

    Attributes:
        layers: linear layers (Dense, Conv2d, AvgPool2d, Flatten, Reshape, Normalize),
            activations and max pools (MaxPool2d).
        input_shape: shape of one input, without the batch axis (e.g. ``(784,)`` or
            ``(1, 28, 28)``).
        input_range: the data domain ``(low, high)`` of every input feature, e.g. ``(-0.5, 0.5)``
            for the references' MNIST convention, or ``None`` when unknown. eps is always
            measured in this input space.
        name: a short human name.
        meta: free-form provenance (dataset, source file, training accuracy...), strings only.

    Construction checks that shapes chain and that every tensor is finite, so a network that
    exists is one the bound code can trust.
    """

    layers: tuple[Layer, ...]
    input_shape: Shape
    input_range: tuple[float, float] | None = None
    name: str = "network"
    meta: Mapping[str, str] = field(default_factory=dict)
    # The dtype of a network without any tensor (only activations, flatten, pooling): it has
    # no weights to carry one, so ``to(dtype=...)`` records it here.
    empty_dtype: torch.dtype | None = field(default=None, compare=False, repr=False)
    _shapes: tuple[Shape, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "meta", dict(self.meta))
        if not self.layers:
            raise InputError("a network needs at least one layer")
        if self.input_range is not None:
            lo, hi = (float(v) for v in self.input_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise InputError(
                    f"input_range must be finite with low < high, got {self.input_range}"
                )
            object.__setattr__(self, "input_range", (lo, hi))
        ref: Tensor | None = None
        for i, layer in enumerate(self.layers):
            for key, t in layer.tensors().items():
                if not torch.is_floating_point(t):
                    raise InputError(
                        f"layer {i} ({type(layer).__name__}) {key} is not a float tensor"
                    )
                if not _finite(t):
                    raise InputError(
                        f"layer {i} ({type(layer).__name__}) {key} contains NaN or inf values"
                    )
                if ref is None:
                    ref = t
                elif t.dtype != ref.dtype or t.device != ref.device:
                    raise InputError(
                        f"layer {i} {key} is {t.dtype} on {t.device}, but earlier tensors are "
                        f"{ref.dtype} on {ref.device}; use Network.to()"
                    )
        # Validates that the shapes chain; kept, since layers are frozen and the bound
        # passes read the shapes a dozen times per call (a millisecond per one-image radius
        # search when they were recomputed each time).
        object.__setattr__(self, "_shapes", tuple(self._chain_shapes()))

    # -- shapes ---------------------------------------------------------------------------
    def _chain_shapes(self) -> list[Shape]:
        out = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                out.append(layer.out_shape(out[-1]))
            except InputError as exc:
                raise InputError(f"layer {i} ({type(layer).__name__}): {exc}") from None
        return out

    @property
    def shapes(self) -> list[Shape]:
        """``shapes[i]`` is the input shape of layer i; ``shapes[-1]`` the output shape."""
        return list(self._shapes)

    @property
    def output_shape(self) -> Shape:
        return self.shapes[-1]

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_shape)

    @property
    def num_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for layer in self.layers for t in layer.tensors().values())

    @property
    def dtype(self) -> torch.dtype:
        for layer in self.layers:
            for t in layer.tensors().values():
                return t.dtype
        return self.empty_dtype or torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for layer in self.layers:
            for t in layer.tensors().values():
                return t.device
        return torch.device("cpu")

    @property
    def activations(self) -> list[Activation]:
        return [layer for layer in self.layers if isinstance(layer, Activation)]

    @property
    def is_mlp(self) -> bool:
        """True if every affine layer is Dense (flatten/reshape/normalize allowed) and there is
        no pooling."""
        return not any(isinstance(layer, (Conv2d, AvgPool2d, MaxPool2d)) for layer in self.layers)

    # -- conversions ----------------------------------------------------------------------
    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Network:
        """A copy with every tensor moved to ``device`` / cast to ``dtype``."""

        def move(layer: Layer) -> Layer:
            tensors = layer.tensors()
            if not tensors:
                return layer
            return replace(
                layer, **{k: t.to(device=device, dtype=dtype) for k, t in tensors.items()}
            )

        return replace(
            self,
            layers=tuple(move(layer) for layer in self.layers),
            empty_dtype=dtype or self.empty_dtype,
        )

    def with_meta(self, **meta: str) -> Network:
        return replace(self, meta={**self.meta, **{k: str(v) for k, v in meta.items()}})

    # -- evaluation -----------------------------------------------------------------------
    def check_input(self, x: Tensor) -> Tensor:
        """``x`` as a batch ``(B, *input_shape)``: adds the batch axis to a single input and
        reports a clear error for a wrong size or non-finite values."""
        return coerce_input(x, self.input_shape, self.dtype, self.device)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch ``x`` of shape ``(B, *input_shape)`` (differentiable)."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def prefix(self, n: int) -> Network:
        """The network made of the first ``n`` layers (used for intermediate bounds)."""
        return replace(self, layers=self.layers[:n])

    def describe(self) -> list[tuple[str, Shape, int]]:
        """(layer description, output shape, parameter count) per layer."""
        rows = []
        shapes = self.shapes
        for layer, shape in zip(self.layers, shapes[1:], strict=True):
            rows.append(
                (layer_summary(layer), shape, sum(t.numel() for t in layer.tensors().values()))
            )
        return rows


def coerce_input(x: Tensor, input_shape: Shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``x`` as a batch ``(B, *input_shape)`` of ``dtype`` on ``device``: adds the batch axis to
    a single input, reshapes a flat one, and reports a clear error for a wrong size or
    non-finite values."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    size = math.prod(input_shape)
    if tuple(x.shape) == input_shape:
        x = x.unsqueeze(0)
    elif tuple(x.shape[1:]) != input_shape:
        _refuse_channels_last(tuple(x.shape), input_shape)
        if x.dim() >= 1 and math.prod(x.shape[1:]) == size:
            x = x.reshape(x.shape[0], *input_shape)
        elif math.prod(x.shape) == size:
            x = x.reshape(1, *input_shape)
        else:
            raise InputError(
                f"input of shape {tuple(x.shape)} does not fit the model's input shape "
                f"{input_shape} (with or without a batch axis)"
            )
    if not torch.is_floating_point(x):
        x = x.to(dtype)
    if not bool(torch.isfinite(x).all()):
        raise InputError("input contains NaN or inf values")
    return x.to(device=device, dtype=dtype)


def _refuse_channels_last(shape: tuple[int, ...], input_shape: Shape) -> None:
    """An image batch in (B, H, W, C) order given to a (C, H, W) model has the right size, so
    a reshape would silently scramble its pixels (the predictions change): refuse it, naming
    the layout the model expects. One channel is the same data either way and passes."""
    if len(input_shape) != 3 or input_shape[0] == 1:
        return
    c, h, w = input_shape
    if shape[-3:] == (h, w, c) and len(shape) in (3, 4):
        raise InputError(
            f"input of shape {shape} looks channels-last (N, H, W, C); the model expects "
            f"channels-first (N, C, H, W) = (N, {c}, {h}, {w}): transpose it, e.g. "
            "x.transpose(0, 3, 1, 2)"
        )


def layer_summary(layer: Layer) -> str:
    """One short line describing a layer, e.g. ``Dense(784 -> 100)``."""
    if isinstance(layer, Dense):
        return f"Dense({layer.weight.shape[1]} -> {layer.weight.shape[0]})"
    if isinstance(layer, Activation):
        label = layer.op.alpha_label  # the parameter's name; None: the activation has none
        if label is not None:
            return f"Activation({layer.name}, {label}={layer.alpha:g})"
        return f"Activation({layer.name})"
    if isinstance(layer, Conv2d):
        w = layer.weight
        return (
            f"Conv2d({w.shape[1] * layer.groups} -> {w.shape[0]}, kernel={tuple(w.shape[2:])}, "
            f"stride={layer.stride}, padding={layer.padding})"
        )
    if isinstance(layer, Reshape):
        return f"Reshape{layer.shape}"
    if isinstance(layer, AvgPool2d):
        extra = "".join(
            (
                ", ceil_mode" if layer.ceil_mode else "",
                "" if layer.count_include_pad else ", count_include_pad=False",
            )
        )
        return (
            f"AvgPool2d(kernel={layer.kernel_size}, stride={layer.stride}, "
            f"padding={layer.padding}{extra})"
        )
    if isinstance(layer, MaxPool2d):
        extra = (f", dilation={layer.dilation}" if layer.dilation != (1, 1) else "") + (
            ", ceil_mode" if layer.ceil_mode else ""
        )
        return (
            f"MaxPool2d(kernel={layer.kernel_size}, stride={layer.stride}, "
            f"padding={layer.padding}{extra})"
        )
    return type(layer).__name__


__all__ = ["LINEAR_TYPES", "Network", "coerce_input", "layer_summary"]
