"""Issue acceptance: an MLP and a CNN trained with ``nnbound train``, exported to ONNX and to
nnbound's safetensors format, re-imported, give the same logits as the original to 1e-6 in
float64, and onnxruntime agrees with the export (to float32 precision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nnbound.cli.main import main
from nnbound.data.registry import load_dataset
from nnbound.network.load import load_model


@pytest.mark.parametrize(
    "argv",
    [
        ["32", "32", "--activation", "tanh"],
        ["32", "--arch", "cnn", "--conv-channels", "4", "8"],
        ["16", "16", "--activation", "leaky", "--leaky-slope", "0.3"],
    ],
)
def test_train_export_reimport(tmp_path: Path, argv: list[str]) -> None:
    native = tmp_path / "model.safetensors"
    assert main(["train", *argv, "--epochs", "2", "--out", str(native), "--quiet"]) == 0
    original = load_model(native).to(dtype=torch.float64)
    onnx_path = tmp_path / "model.onnx"
    from nnbound.network.to_onnx import save_onnx

    save_onnx(original, onnx_path)
    back = load_model(onnx_path).to(dtype=torch.float64)
    assert back.input_range == original.input_range == (-0.5, 0.5)
    x = load_dataset("digits").images[:64].double()
    want = original(original.check_input(x))
    assert torch.allclose(back(back.check_input(x)), want, rtol=1e-6, atol=1e-9)
    # onnxruntime has no float64 Conv and keeps float attributes (the leaky slope) in
    # float32, so it is checked on a float32 export, to float32 precision.
    onnx32 = tmp_path / "model32.onnx"
    save_onnx(original.to(dtype=torch.float32), onnx32)
    session = ort.InferenceSession(str(onnx32), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: x.reshape(64, *original.input_shape).float().numpy()})[0]
    scale = float(want.abs().max())
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=0, atol=1e-5 * scale)
