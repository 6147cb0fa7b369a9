"""Import Keras-2 ``model.save`` HDF5 files (the RecurJac/CROWN reference's model format).

Read with h5py only -- no TensorFlow. The file layout Keras writes:

* root attribute ``model_config``: JSON ``{"class_name": "Sequential", "config": ...}`` where
  ``config`` is either the list of layers (Keras 2.0/2.1) or ``{"name": ..., "layers": [...]}``
  (Keras 2.2+ and tf.keras); each layer is ``{"class_name": ..., "config": {"name": ...}}``.
* group ``model_weights`` with attribute ``layer_names``; one group per layer with attribute
  ``weight_names`` (e.g. ``b"dense_1/kernel:0"``) naming datasets inside that group, so the
  kernel of layer ``dense_1`` lives at ``model_weights/dense_1/dense_1/kernel:0``.
  Attributes longer than HDF5's 64 KiB header limit are split into ``layer_names0``,
  ``layer_names1``, ... .

Keras kernels are ``(in, out)``; the IR's Dense weight is ``(out, in)``, hence the transpose.
Keras images are HWC: the IR input keeps Keras's ``(H, W, C)`` shape so that a Flatten right
after the input flattens in exactly Keras's order (a Conv2D would need CHW, so none is
accepted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.layers import (
    Activation,
    AvgPool2d,
    Dense,
    Flatten,
    Layer,
    MaxPool2d,
    Reshape,
    Shape,
)
from nnbound.network.network import Network

__all__ = ["HDF5_SIGNATURE", "from_keras_h5", "is_hdf5"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
"""The first 8 bytes of an HDF5 superblock."""

# Layers that are the identity at inference time.
_SKIPPED = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
    }
)


def is_hdf5(path: str | Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (at offset 0 or a user-block offset)."""
    try:
        with open(path, "rb") as fh:
            for offset in (0, 512, 1024, 2048):
                fh.seek(offset)
                if fh.read(8) == HDF5_SIGNATURE:
                    return True
    except OSError:
        return False
    return False


def _text(value: Any) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _attr_list(group: h5py.Group, name: str) -> list[str] | None:
    """A list-of-strings attribute, reassembling Keras's chunked ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = group.attrs[name]
    elif f"{name}0" in group.attrs:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [_text(v) for v in np.atleast_1d(values)]


def _activation(name: Any, where: str) -> Activation | None:
    """The IR activation a Keras activation name means (``None``: ``linear``, the identity):
    the registered activation with that Keras name (:func:`nnbound.ops.registry.by_keras`),
    with the parameter a bare name means (its ``keras_settings.alpha_default``)."""
    from nnbound.ops.activation import ActivationOp
    from nnbound.ops.registry import by_keras

    if isinstance(name, dict):  # Keras 3 may serialize {"class_name": ..., "config": ...}
        name = name.get("config", {}).get("name", name.get("class_name"))
    key = str(name).lower()
    if key == "linear":
        return None
    for op in by_keras(key):
        if not isinstance(op, ActivationOp):
            continue
        if not op.has_alpha:
            return Activation(op.name)
        if op.keras_settings.alpha_default is not None:
            return Activation(op.name, op.keras_settings.alpha_default)
    hint = (
        " (bounds are computed on logits: save the model without the final softmax)"
        if key == "softmax"
        else ""
    )
    raise UnsupportedError(f"{where}: unsupported Keras activation {name!r}{hint}")


def _layer_weights(
    weights: h5py.Group | None, lname: str, where: str
) -> list[tuple[str, np.ndarray]]:
    """``(weight name, array)`` pairs of one layer, in Keras's order."""
    if weights is None or lname not in weights:
        raise ModelFormatError(f"{where}: no weights stored for layer {lname!r}")
    g = weights[lname]
    names = _attr_list(g, "weight_names")
    out: list[tuple[str, np.ndarray]] = []
    if names is None:  # not written by Keras's saver; take datasets in storage order
        g.visititems(
            lambda n, obj: out.append((n, obj[()])) if isinstance(obj, h5py.Dataset) else None
        )
        return out
    for wn in names:
        if wn not in g:
            raise ModelFormatError(f"{where}: weight {wn!r} listed but missing")
        out.append((wn, np.asarray(g[wn][()])))
    return out


def _dense_weights(
    weights: h5py.Group | None, lname: str, cfg: dict[str, Any], where: str
) -> tuple[np.ndarray, np.ndarray]:
    arrays = _layer_weights(weights, lname, where)
    kernel = next((a for n, a in arrays if "kernel" in n or n.endswith("_W")), None)
    bias = next((a for n, a in arrays if "bias" in n or n.endswith("_b")), None)
    if kernel is None:  # unknown naming: the 2-D array is the kernel, the 1-D one the bias
        kernel = next((a for _, a in arrays if a.ndim == 2), None)
        bias = next((a for _, a in arrays if a.ndim == 1), None) if bias is None else bias
    if kernel is None or kernel.ndim != 2:
        raise ModelFormatError(f"{where}: no 2-D kernel among the weights of {lname!r}")
    if bias is None:
        if cfg.get("use_bias", True):
            raise ModelFormatError(f"{where}: no bias among the weights of {lname!r}")
        bias = np.zeros(kernel.shape[1], dtype=kernel.dtype)
    if bias.shape != (kernel.shape[1],):
        raise ModelFormatError(
            f"{where}: bias shape {bias.shape} does not match kernel {kernel.shape}"
        )
    return kernel, bias


def _input_shape(layers: list[dict[str, Any]]) -> Shape | None:
    for layer in layers[:1] + [la for la in layers if la.get("class_name") == "InputLayer"]:
        cfg = layer.get("config", {})
        shape = cfg.get("batch_input_shape", cfg.get("batch_shape"))
        if shape is not None:
            dims = list(shape)[1:]
            if not dims or any(d is None for d in dims):
                raise UnsupportedError(f"Keras input shape {shape} has unknown dimensions")
            return tuple(int(d) for d in dims)
    return None


def _int_pair(v: Any) -> tuple[int, int]:
    vals = [int(v)] * 2 if isinstance(v, (int, float)) else [int(x) for x in v]
    if len(vals) != 2:
        raise ModelFormatError(f"expected two integers, got {v!r}")
    return (vals[0], vals[1])


_POOLS = ("AveragePooling2D", "MaxPooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D")


def _pool_layers(
    kind: str, cfg: dict[str, Any], shape: Shape | None, dtype: torch.dtype | None, where: str
) -> list[Layer]:
    """The IR layers of a Keras pooling layer on an input of ``shape``.

    The IR pools ``(C, H, W)`` images. ``channels_first`` data is that layout. Keras's default
    ``channels_last`` ``(H, W, C)`` is the same data order when ``C = 1`` (a Reshape on each
    side is then exact); a global average pool of any ``(H, W, C)`` input is a Dense layer
    (weights ``1 / (H W)``). Other cases, and ``padding='same'`` that would pad (Keras pads
    asymmetrically and averages only the real entries), raise UnsupportedError.
    """
    if shape is None or len(shape) != 3:
        raise UnsupportedError(f"{where}: {kind} needs a known 3-D image input, got {shape}")
    first = cfg.get("data_format", "channels_last") == "channels_first"
    c, h, w = shape if first else (shape[2], shape[0], shape[1])
    glob = kind.startswith("Global")
    avg = "Average" in kind
    keepdims = bool(cfg.get("keepdims", False))
    if glob:
        kernel, stride = (h, w), (h, w)
    else:
        kernel = _int_pair(cfg.get("pool_size", (2, 2)))
        strides = cfg.get("strides")
        stride = kernel if strides is None else _int_pair(strides)
        padding = str(cfg.get("padding", "valid")).lower()
        if padding == "same":
            for size, k, s in zip((h, w), kernel, stride, strict=True):
                if max((-(-size // s) - 1) * s + k - size, 0):
                    raise UnsupportedError(
                        f"{where}: {kind} with padding='same' that pads the input (Keras pads "
                        "asymmetrically); only padding that adds nothing is supported"
                    )
        elif padding != "valid":
            raise UnsupportedError(f"{where}: {kind} with padding={padding!r}")
    try:
        pool: Layer = AvgPool2d(kernel, stride) if avg else MaxPool2d(kernel, stride)
        _, ho, wo = pool.out_shape((c, h, w))
    except InputError as exc:
        raise ModelFormatError(f"{where}: {exc}") from None
    if first:
        out: list[Layer] = [pool]
        if glob and not keepdims:
            out.append(Flatten())
        return out
    if glob and avg and c > 1:
        # mean over H and W of an (H, W, C) input: output channel k averages entries k, k+C, ...
        weight = torch.zeros(c, h * w * c, dtype=dtype or torch.float32)
        for k in range(c):
            weight[k, k::c] = 1.0 / (h * w)
        out = [Flatten(), Dense(weight, torch.zeros(c, dtype=weight.dtype))]
        return [*out, Reshape((1, 1, c))] if keepdims else out
    if c != 1:
        raise UnsupportedError(
            f"{where}: {kind} of a channels_last input with {c} channels; nnbound pools "
            "(C, H, W) images, so only single-channel channels_last inputs are supported"
        )
    # (ho, wo, 1) has the data order of the pool's (1, ho, wo) output
    tail: Layer = Flatten() if glob and not keepdims else Reshape((ho, wo, 1))
    return [Reshape((1, h, w)), pool, tail]


def _lambda_activation(lname: str, declared: Mapping[str, str], where: str) -> Activation:
    """The activation the caller declared a Lambda layer computes.

    A Lambda's function is marshalled Python bytecode: it is never run here (running it is
    running the file's code), and its name says nothing about it (the issue's ``arctan_1``
    computed ``x * 100``), so nothing in the file identifies it. The reference builds its
    arctan as ``Lambda`` layers named ``arctan_<i>``; whoever checked such a file's code says
    so with ``lambda_activations={"arctan_1": "arctan", ...}``.
    """
    if lname not in declared:
        raise UnsupportedError(
            f"{where}: a Keras Lambda layer runs Python code stored in the file, which nnbound "
            "neither runs nor trusts by its name; if you know what it computes, declare it: "
            f"from_keras_h5(path, lambda_activations={{{lname!r}: 'arctan'}}) (any activation "
            "name; the RecurJac reference's arctan_<i> layers are arctan)"
        )
    return Activation(declared[lname])


def _read(
    f: h5py.File,
    path: Path,
    input_range: tuple[float, float] | None,
    name: str | None,
    lambda_activations: Mapping[str, str],
) -> Network:
    if "model_config" not in f.attrs:
        if _attr_list(f, "layer_names") is not None:
            raise ModelFormatError(
                f"{path}: holds only weights (model.save_weights); the architecture is missing "
                "(save with model.save)"
            )
        raise ModelFormatError(f"{path}: HDF5 file without a Keras model_config attribute")
    try:
        config = json.loads(_text(f.attrs["model_config"]))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: model_config is not JSON ({exc})") from None
    cls = config.get("class_name") if isinstance(config, dict) else None
    if cls != "Sequential":
        raise UnsupportedError(f"{path}: only Keras Sequential models are supported, got {cls!r}")
    inner = config.get("config")
    layers = inner if isinstance(inner, list) else (inner or {}).get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelFormatError(f"{path}: model_config lists no layers")
    weights = f.get("model_weights")
    if weights is not None and not isinstance(weights, h5py.Group):
        raise ModelFormatError(f"{path}: model_weights is not a group")

    shape = _input_shape(layers)
    ir: list[Layer] = []
    dtype: torch.dtype | None = None
    current: Shape | None = shape

    def push(layer: Layer, where: str) -> None:
        nonlocal current
        if current is not None:
            try:
                current = layer.out_shape(current)
            except InputError as exc:
                raise ModelFormatError(f"{where}: {exc}") from None
        ir.append(layer)

    for i, layer in enumerate(layers):
        kind = layer.get("class_name")
        cfg = layer.get("config", {})
        lname = str(cfg.get("name", f"layer_{i}"))
        where = f"{path.name}: layer {i} ({kind} {lname!r})"
        if kind == "InputLayer" or kind in _SKIPPED:
            continue
        if kind == "Dense":
            kernel, bias = _dense_weights(weights, lname, cfg, where)
            if current is None:
                current = shape = (int(kernel.shape[0]),)
            if len(current) != 1:
                raise UnsupportedError(
                    f"{where}: Dense applied to a {current} input acts on its last axis; only "
                    "flat inputs are supported (add a Flatten)"
                )
            if dtype is None:
                dtype = torch.float64 if kernel.dtype == np.float64 else torch.float32
            w = torch.as_tensor(np.ascontiguousarray(kernel.T)).to(dtype)
            b = torch.as_tensor(np.ascontiguousarray(bias)).to(dtype)
            push(Dense(w, b), where)
            act = _activation(cfg.get("activation", "linear"), where)
            if act is not None:
                push(act, where)
        elif kind == "Activation":
            act = _activation(cfg.get("activation"), where)
            if act is not None:
                push(act, where)
        elif kind == "LeakyReLU":
            alpha = cfg.get("alpha", cfg.get("negative_slope", 0.3))
            push(Activation("leaky_relu", float(alpha)), where)
        elif kind == "ELU":
            push(Activation("elu", float(cfg.get("alpha", 1.0))), where)
        elif kind == "ReLU":
            slope = float(cfg.get("negative_slope", 0.0))
            cap = cfg.get("max_value")
            if cap is not None and slope == 0.0 and float(cap) > 0.0:
                cap = float(cap)  # the bounded ReLU min(max(x, 0), max_value)
            elif cap is not None:
                raise UnsupportedError(f"{where}: ReLU with max_value and negative_slope")
            if float(cfg.get("threshold", 0.0)) != 0.0:
                raise UnsupportedError(f"{where}: ReLU with a threshold")
            if cap is not None:
                push(Activation("brelu", cap), where)
            else:
                push(Activation("leaky_relu", slope) if slope else Activation("relu"), where)
        elif kind == "Lambda":
            push(_lambda_activation(lname, lambda_activations, where), where)
        elif kind == "Flatten":
            if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
                raise UnsupportedError(f"{where}: Flatten with data_format={cfg['data_format']!r}")
            push(Flatten(), where)
        elif kind == "Reshape":
            push(Reshape(tuple(int(d) for d in cfg["target_shape"])), where)
        elif kind in _POOLS:
            for pool_layer in _pool_layers(kind, cfg, current, dtype, where):
                push(pool_layer, where)
        else:
            raise UnsupportedError(f"{where}: unsupported Keras layer {kind}")
    if shape is None:
        raise ModelFormatError(f"{path}: model_config records no input shape")
    if not ir:
        raise ModelFormatError(f"{path}: the model has no layers nnbound can represent")
    meta = {
        "source": str(path),
        "format": "keras-h5",
        "keras_version": _text(f.attrs.get("keras_version", "unknown")),
    }
    net_name = name or (inner.get("name") if isinstance(inner, dict) else None) or path.stem
    return Network(
        layers=tuple(ir), input_shape=shape, input_range=input_range, name=str(net_name), meta=meta
    )


def from_keras_h5(
    path: str | Path,
    *,
    input_range: tuple[float, float] | None = (-0.5, 0.5),
    name: str | None = None,
    lambda_activations: Mapping[str, str] | None = None,
) -> Network:
    """Read a Keras-2 Sequential model saved with ``model.save`` (HDF5, any file extension).

    Supported layers: InputLayer, Dense (activation linear/relu/tanh/sigmoid/softplus/elu),
    Activation (same names; ``bounded_relu`` is the reference's bounded ReLU), LeakyReLU
    (``alpha``), ELU, ReLU (``max_value`` c: the bounded ReLU; no threshold),
    Flatten (channels_last), Reshape, AveragePooling2D / MaxPooling2D / GlobalAveragePooling2D /
    GlobalMaxPooling2D (channels_first, or single-channel channels_last; a global average pool
    of any channels_last input; no padding), Dropout and other inference-time identities
    (skipped), and
    Lambda layers the caller declares in ``lambda_activations`` (their code is never run
    nor guessed from their name). Anything else raises :class:`UnsupportedError` naming the
    layer.

    Args:
        path: the HDF5 file.
        input_range: data domain of each input feature; default ``(-0.5, 0.5)``, the
            reference's ``x / 255 - 0.5`` pixel convention.
        name: network name (default: the Keras model's name, else the file stem).
        lambda_activations: ``{Lambda layer name: activation name}`` for Lambda layers whose
            code the caller has checked (e.g. ``{"arctan_1": "arctan"}`` for the RecurJac
            reference's arctan); any other Lambda layer is refused.

    Returns:
        A float32 (as stored) network whose input shape is Keras's ``batch_input_shape``
        without the batch axis (HWC for images, e.g. ``(28, 28, 1)``).

    Raises:
        ModelFormatError: missing, non-HDF5, corrupt or truncated file, or no architecture.
        UnsupportedError: a layer or activation nnbound does not handle, or not Sequential.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"model file not found: {p}")
    if not is_hdf5(p):
        raise ModelFormatError(f"{p}: not an HDF5 file (no HDF5 signature)")
    try:
        with h5py.File(p, "r") as f:
            return _read(f, p, input_range, name, dict(lambda_activations or {}))
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
        if isinstance(exc, InputError):  # a weight with NaN/inf, found by Network
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"{p}: corrupt or truncated Keras HDF5 file ({msg})") from None
