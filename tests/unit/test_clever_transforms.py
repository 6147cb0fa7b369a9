"""BPDA input transformations: the reference's exact pixel operations."""

from __future__ import annotations

import pytest
import torch

from nnbound.clever.transforms import (
    apply_transform,
    check_transform,
    jpeg,
    png_round,
    png_via_pillow,
    reduce_bits,
)
from nnbound.errors import InputError, UnsupportedError


def images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_reduce_keeps_three_bits_of_the_truncated_byte() -> None:
    u = torch.tensor([0.0, 31.9 / 255, 32 / 255, 100 / 255, 254.9 / 255, 1.0])
    out = reduce_bits(u) * 255
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 32.0, 96.0, 224.0, 224.0]), atol=1e-4)
    levels = torch.round(reduce_bits(images((500,))) * 255)
    assert set(levels.tolist()) <= {32.0 * i for i in range(8)}


def test_png_round_trip_is_8_bit_rounding() -> None:
    for shape in ((3, 1, 8, 8), (2, 3, 6, 5), (2, 16)):
        u = images(shape)
        assert torch.equal(png_via_pillow(u), png_round(u))


@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (2, 3, 16, 16), (3, 64)])
def test_jpeg_round_trip_is_lossy_but_close_and_keeps_shape(shape: tuple[int, ...]) -> None:
    u = images(shape) * 0.2 + 0.4  # mid-grey with small noise: JPEG keeps it roughly
    out = jpeg(u)
    assert out.shape == u.shape and out.dtype == u.dtype
    assert 0 < float((out - u).abs().mean()) < 0.1
    assert torch.equal(torch.round(out * 255), out * 255)  # decoded bytes / 255


def test_apply_transform_maps_the_data_range_to_unit_pixels() -> None:
    x = images((2, 1, 4, 4)) - 0.5
    out = apply_transform("reduce", x, (-0.5, 0.5))
    assert torch.allclose(out, reduce_bits(x + 0.5) - 0.5)
    assert apply_transform("none", x, None) is x
    y = images((2, 1, 4, 4)) * 255
    assert torch.allclose(apply_transform("png", y, (0.0, 255.0)), torch.round(y), atol=1e-4)


def test_names_and_errors() -> None:
    assert check_transform("defend_jpeg") == "jpeg" and check_transform("PNG") == "png"
    with pytest.raises(InputError):
        check_transform("blur")
    with pytest.raises(InputError):
        apply_transform("png", torch.zeros(1, 4), None)
    with pytest.raises(UnsupportedError):
        jpeg(torch.zeros(1, 2, 4, 4))  # 2 channels
    with pytest.raises(UnsupportedError):
        jpeg(torch.zeros(1, 10))  # not a square
