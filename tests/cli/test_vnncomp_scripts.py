"""The VNN-COMP tool interface: ``vnncomp/prepare_instance.sh`` and ``vnncomp/run_instance.sh``
run as the competition harness runs them, on the tiny instances in tests/data; the result
file holds the competition's words and counterexample format."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.network.load import load_model
from nnbound.verify.vnnlib import read_vnnlib

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "vnncomp"
DATA = ROOT / "tests" / "data"
SAT_NET = DATA / "onnx" / "test_sat.onnx"
UNSAT_NET = DATA / "vnncomp" / "test_unsat.onnx"
PROP = DATA / "vnncomp" / "test_prop.vnnlib"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "timeout", "gzip")),
    reason="needs bash, timeout and gzip (the competition's Linux harness)",
)


def script(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["NNBOUND_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sat_result_file_has_a_counterexample_that_checks(tmp_path: Path) -> None:
    assert script("prepare_instance.sh", "v1", "test", SAT_NET, PROP).returncode == 0
    result = tmp_path / "out.txt"
    # The harness may pass a compressed property.
    packed = tmp_path / "prop.vnnlib.gz"
    packed.write_bytes(gzip.compress(PROP.read_bytes()))
    proc = script("run_instance.sh", "v1", "test", SAT_NET, packed, result, "20")
    assert proc.returncode == 0, proc.stderr
    text = result.read_text()
    assert text.startswith("sat\n((X_0 ") and text.rstrip().endswith(")")
    values = dict(re.findall(r"\(([XY]_\d+) ([^()\s]+)\)", text))
    x = np.array([float(values[f"X_{i}"]) for i in range(5)])
    y = np.array([float(values[f"Y_{j}"]) for j in range(5)])
    net = load_model(SAT_NET).to(dtype=torch.float64)
    out = net(torch.as_tensor(x[None])).detach().numpy()
    np.testing.assert_allclose(out, y[None], rtol=1e-9, atol=1e-12)
    prop = read_vnnlib(PROP)
    assert any(
        np.all(x >= d.lower) and np.all(x <= d.upper) and any(g.holds(y[None])[0] for g in d.groups)
        for d in prop.disjuncts
    )


def test_unsat_and_error_words(tmp_path: Path) -> None:
    result = tmp_path / "out.txt"
    assert script("run_instance.sh", "v1", "test", UNSAT_NET, PROP, result, "20").returncode == 0
    assert result.read_text() == "unsat\n"
    # A property that does not fit the network, and a timeout that is no time limit.
    nano = DATA / "vnncomp" / "test_nano.vnnlib"
    assert script("prepare_instance.sh", "v1", "test", UNSAT_NET, nano).returncode == 1
    for prop, limit in ((nano, "20"), (PROP, "nan")):
        proc = script("run_instance.sh", "v1", "test", UNSAT_NET, prop, result, limit)
        assert proc.returncode == 0 and result.read_text() == "error\n", (prop, limit)
        assert "nnbound: error:" in proc.stderr
    assert script("run_instance.sh", "v1", "test", UNSAT_NET, PROP).returncode == 1
