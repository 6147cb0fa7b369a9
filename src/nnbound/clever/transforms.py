"""Input transformations for CLEVER with BPDA (clever_spec §7).

A "defense" ``T`` that preprocesses the input (bit-depth reduction, JPEG, PNG) is not
differentiable (its gradient is 0 almost everywhere). BPDA (backward pass differentiable
approximation) evaluates the network at ``T(x)`` and takes ``grad g(T(x))`` as the gradient at
``x``: the backward pass of ``T`` is the identity (straight-through). CLEVER then measures the
robustness of the *network behind* ``T``, which is the point (the README: "you should expect
roughly the same CLEVER score with input transformations").

Every transform works on images scaled to ``[0, 1]``: the data range ``(lo, hi)`` is mapped
to ``[0, 1]``, ``T`` is applied, the result is mapped back (the reference: ``T(x + 0.5) - 0.5``
for its ``[-0.5, 0.5]`` pixels). Exactly the reference's operations:

=========  ===================================================================================
name       operation on ``u`` in ``[0, 1]``
=========  ===================================================================================
none       identity (no transform)
reduce     ``floor(u * 255)`` (uint8 truncation) ``>> 5 << 5``, ``/ 255``: levels 0, 32, ... 224
jpeg       ``uint8(u * 255)`` (truncation) -> Pillow JPEG, quality 75 (Pillow defaults, 4:2:0
           chroma for RGB) -> decode ``/ 255``
png        ``round(u * 255) / 255``: PNG is lossless, so its round trip is exactly 8-bit
           rounding; done as a tensor op (:func:`png_via_pillow` is the Pillow round trip
           that the tests compare it with)
=========  ===================================================================================

``reduce`` and ``png`` are pure tensor ops on any device; ``jpeg`` runs Pillow on CPU one image
at a time. Images are ``(C, H, W)`` with C = 1 (grey) or 3 (RGB), ``(H, W)``, or flat with a
square number of features (read as a grey square image, as the reference's ``np.squeeze``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from nnbound.errors import InputError, UnsupportedError

TRANSFORMS: tuple[str, ...] = ("none", "reduce", "jpeg", "png")
JPEG_QUALITY = 75
REDUCE_BITS = 3


def _to_unit(x: Tensor, box: tuple[float, float]) -> Tensor:
    lo, hi = box
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def _from_unit(u: Tensor, box: tuple[float, float]) -> Tensor:
    lo, hi = box
    return u * (hi - lo) + lo


def reduce_bits(u: Tensor, bits: int = REDUCE_BITS) -> Tensor:
    """Bit-depth reduction of ``u`` in ``[0, 1]`` (any shape): keep the top ``bits`` of the
    truncated 8-bit value (the reference's ``defend_reduce``, depth 3)."""
    step = 2 ** (8 - bits)
    # The product is formed in u's own dtype, as the reference's numpy float32 ``x * 255``:
    # the truncation of values like float32(k / 255) * 255 must land where the reference's did.
    v = torch.floor(u * 255.0)
    return torch.floor(v / step) * step / 255.0


def png_round(u: Tensor) -> Tensor:
    """The PNG round trip of ``u`` in ``[0, 1]``: 8-bit rounding (PNG is lossless)."""
    return torch.round(u * 255.0) / 255.0


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` a Pillow image can be made from, for one input of ``shape``."""
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    n = math.prod(shape)
    side = math.isqrt(n)
    if side * side == n:
        return (1, side, side)
    raise UnsupportedError(
        f"the jpeg transform needs images (1 or 3, H, W) or a square grey image; input shape "
        f"{shape} is neither"
    )


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    """uint8 ``(C, H, W)`` -> decoded uint8 ``(C, H, W)`` after a JPEG round trip."""
    from PIL import Image

    c = img.shape[0]
    pil = Image.fromarray(img[0], "L") if c == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("L" if c == 1 else "RGB"))
    return out[None] if c == 1 else out.transpose(2, 0, 1)


def jpeg(u: Tensor, quality: int = JPEG_QUALITY) -> Tensor:
    """JPEG round trip of a batch ``u`` ``(B, *shape)`` in ``[0, 1]`` (Pillow, on CPU)."""
    try:
        import PIL  # noqa: F401
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise UnsupportedError("the jpeg transform needs Pillow (pip install pillow)") from exc
    shape = tuple(u.shape[1:])
    chw = _image_shape(shape)
    # uint8 truncation as the reference's np.uint8(x * 255)
    raw = torch.floor(u.detach() * 255.0).clamp(0, 255).to(torch.uint8)
    raw = raw.cpu().numpy().reshape(u.shape[0], *chw)
    out = np.stack([_jpeg_one(img, quality) for img in raw]) if len(raw) else raw
    back = torch.from_numpy(out.astype(np.float64) / 255.0).reshape(u.shape)
    return back.to(device=u.device, dtype=u.dtype)


def png_via_pillow(u: Tensor) -> Tensor:
    """The reference's ``defend_png`` literally: ``uint8(round(u * 255))`` -> Pillow PNG ->
    decode ``/ 255``. Equal to :func:`png_round` (used by the tests to show it)."""
    from PIL import Image

    shape = tuple(u.shape[1:])
    chw = _image_shape(shape)
    raw = torch.round(u.detach() * 255.0).clamp(0, 255).to(torch.uint8)
    raw = raw.cpu().numpy().reshape(u.shape[0], *chw)
    outs = []
    for img in raw:
        c = img.shape[0]
        pil = (
            Image.fromarray(img[0], "L")
            if c == 1
            else Image.fromarray(img.transpose(1, 2, 0), "RGB")
        )
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        buf.seek(0)
        arr = np.asarray(Image.open(buf))
        outs.append(arr[None] if c == 1 else arr.transpose(2, 0, 1))
    out = np.stack(outs).astype(np.float64) / 255.0
    return torch.from_numpy(out).reshape(u.shape).to(device=u.device, dtype=u.dtype)


_UNIT_TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {
    "reduce": reduce_bits,
    "jpeg": jpeg,
    "png": png_round,
}


def check_transform(name: str) -> str:
    """``name`` lower-cased if it is a known transform (also the reference's ``defend_*``
    spellings), else :class:`InputError`."""
    key = str(name).strip().lower()
    key = key.removeprefix("defend_")
    if key not in TRANSFORMS:
        raise InputError(f"unknown transform {name!r}; use {', '.join(TRANSFORMS)}")
    return key


def apply_transform(name: str, x: Tensor, box: tuple[float, float] | None) -> Tensor:
    """``T(x)`` for a batch ``x`` ``(B, *shape)`` in the data range ``box``, detached.

    The result is what the network sees; its gradient is taken with respect to this tensor
    (BPDA: the transform's backward pass is the identity)."""
    key = check_transform(name)
    if key == "none":
        return x
    if box is None:
        raise InputError(
            f"the {key} transform needs the model's input range (to map pixels to 8 bits); "
            "pass input_range"
        )
    with torch.no_grad():
        u = _UNIT_TRANSFORMS[key](_to_unit(x, box))
        return _from_unit(u, box).clamp_(box[0], box[1])
