"""Every ONNX network of the shared VNN-COMP benchmarks imports and computes what onnxruntime
computes.

The benchmarks live next to the repository (``<repo>/../shared/benchmarks/vnncomp``); the test
is skipped where that folder is absent.

Two comparisons per network, on a few random inputs:

* float64: the model with its initializers widened to DOUBLE, run by onnxruntime, against the
  float64 import -- this checks the import's semantics, to 1e-5 of the largest logit (measured
  agreement: ~1e-13);
* float32: the file as is against the float32 import, to 1e-4: both sides round in float32, and
  onnxruntime itself differs from the exact result by up to ~5e-5 of the largest logit on the
  deeper ACAS Xu networks, so a 1e-5 bound would test rounding luck rather than the importer.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from nnbound.network.from_onnx import from_onnx

SHARED = Path(__file__).parents[2].parent / "shared"
VNNCOMP = SHARED / "benchmarks" / "vnncomp"
NETWORKS = sorted(VNNCOMP.rglob("*.onnx")) if VNNCOMP.is_dir() else []

pytestmark = pytest.mark.skipif(
    not NETWORKS, reason=f"VNN-COMP benchmarks not found under {VNNCOMP}"
)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float64)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = got.reshape(-1), ref.reshape(-1)
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))


@pytest.mark.parametrize("path", NETWORKS, ids=[str(p.relative_to(VNNCOMP)) for p in NETWORKS])
def test_network_matches_onnxruntime(path: Path) -> None:
    net = from_onnx(path)
    assert len(net.output_shape) == 1
    model = onnx.load(path)
    sess32 = _session(model)
    sess64 = _session(_to_double(model))
    net64 = net.to(dtype=torch.float64)
    inp = sess32.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    assert int(np.prod(shape)) == net.num_inputs
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    lo = 0.0 if "mnist" in path.name else -1.0
    for _ in range(3):
        x = rng.uniform(lo, 1.0, size=shape)
        ref64 = sess64.run(None, {inp.name: x})[0]
        got64 = net64(net64.check_input(torch.from_numpy(x))).detach().numpy()
        assert _rel_err(got64, ref64) <= 1e-5
        x32 = x.astype(np.float32)
        ref32 = sess32.run(None, {inp.name: x32})[0]
        got32 = net(net.check_input(torch.from_numpy(x32))).detach().numpy()
        assert _rel_err(got32, ref32) <= 1e-4
