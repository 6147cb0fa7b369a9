"""``nnbound verify``: one instance (sat with its counterexample, unsat), result files, JSON,
batches from a CSV, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.cli.main import main
from nnbound.network.load import load_model
from nnbound.verify.vnnlib import read_vnnlib

DATA = Path(__file__).resolve().parents[1] / "data"
VNN = DATA / "vnncomp"
SAT_NET = DATA / "onnx" / "test_sat.onnx"
UNSAT_NET = VNN / "test_unsat.onnx"
PROP = VNN / "test_prop.vnnlib"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def parse_assignment(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"\(([XY]_\d+) ([-+0-9.eE]+|-?inf|nan)\)", text)}


def test_sat_instance_prints_a_counterexample_that_checks(capsys, tmp_path: Path) -> None:
    result = tmp_path / "out.txt"
    code, out, err = run(capsys, "verify", str(SAT_NET), str(PROP), "--result", str(result))
    assert code == 0
    assert out.startswith("sat\n((X_0 ") and out.rstrip().endswith(")")
    assert result.read_text() == out
    assert "sat in" in err and "onnxruntime agrees: yes" in err
    values = parse_assignment(out)
    x = np.array([values[f"X_{i}"] for i in range(5)])
    y = np.array([values[f"Y_{j}"] for j in range(5)])
    (d,) = read_vnnlib(PROP).disjuncts
    assert np.all(x >= d.lower) and np.all(x <= d.upper)
    net = load_model(SAT_NET).to(dtype=torch.float64)
    y_net = net(torch.as_tensor(x).reshape(1, -1))[0].detach().numpy()
    np.testing.assert_allclose(y, y_net, rtol=0, atol=1e-12)
    assert any(g.holds(y_net.reshape(1, -1))[0] for g in d.groups)


def test_unsat_instance_and_json(capsys, tmp_path: Path) -> None:
    result = tmp_path / "r.txt"
    code, out, _ = run(capsys, "verify", str(UNSAT_NET), str(PROP), "--result", str(result))
    assert (code, out) == (0, "unsat\n") and result.read_text() == "unsat\n"
    code, out, _ = run(capsys, "verify", str(SAT_NET), str(PROP), "--json", "--timeout", "20")
    rec = json.loads(out)
    assert rec["result"] == "sat" and rec["timeout"] == 20.0
    assert len(rec["counterexample"]["x"]) == 5 and len(rec["counterexample"]["y"]) == 5
    assert rec["provenance"]["dtype"] == "float64"
    assert rec["provenance"]["device"] == "cpu"


def test_device_option_runs_there_and_is_recorded(capsys, tmp_path: Path) -> None:
    """``--device`` moves the network before the search; the record names the device (CUDA
    itself is covered by tests/gpu, which skips without it)."""
    code, out, _ = run(capsys, "verify", str(UNSAT_NET), str(PROP), "--json", "--device", "cpu")
    assert code == 0 and json.loads(out)["provenance"]["device"] == "cpu"
    plain = tmp_path / "plain.csv"
    plain.write_text(f"{UNSAT_NET},{PROP},30\n")
    code, out, _ = run(capsys, "verify", "--batch", str(plain), "--json", "--device", "cpu")
    rec = json.loads(out)
    assert code == 0 and rec["instances"][0]["result"] == "unsat"
    assert rec["provenance"]["device"] == "cpu"


def test_batch_runs_every_instance_and_summarises(capsys, tmp_path: Path) -> None:
    out_csv = tmp_path / "results.csv"
    code, out, err = run(
        capsys,
        "verify",
        "--batch",
        str(VNN / "instances.csv"),
        "--result",
        str(out_csv),
        "--timeout",
        "30",
    )
    assert code == 0, err
    assert out.count(" ok") == 5 and "WRONG" not in out
    assert re.search(r"instances\s+unsat\s+sat\s+unknown\s+timeout\s+correct\s+wrong", out)
    assert re.search(r"\n\s+5\s+4\s+1\s+0\s+0\s+5\s+0\s", out)
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["result"] for r in rows] == [r["expected"] for r in rows]
    assert err.count("[") == 5


def test_batch_headerless_csv_and_wrong_expectations_exit_1(capsys, tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text(f"{UNSAT_NET},{PROP},30\n")
    code, out, _ = run(capsys, "verify", "--batch", str(plain), "--json")
    rec = json.loads(out)
    assert code == 0 and rec["instances"][0]["result"] == "unsat"
    assert rec["instances"][0]["check"] == "-"  # nothing expected
    flipped = tmp_path / "flipped.csv"
    flipped.write_text(f"onnx,vnnlib,timeout_s,expected\n{UNSAT_NET},{PROP},30,sat\n")
    code, out, _ = run(capsys, "verify", "--batch", str(flipped))
    assert code == 1 and "WRONG" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify"], "needs MODEL and PROPERTY"),
        (["verify", str(SAT_NET)], "needs MODEL and PROPERTY"),
        (["verify", str(SAT_NET), str(PROP), "--batch", "x.csv"], "not both"),
        (["verify", str(SAT_NET), "missing.vnnlib"], "not found"),
        (["verify", str(SAT_NET), str(VNN / "test_nano.vnnlib")], "declares 1 inputs"),
        (["verify", str(SAT_NET), str(PROP), "--timeout", "0"], "--timeout"),
        (["verify", str(SAT_NET), str(PROP), "--timeout", "-3"], "--timeout"),
        (["verify", str(SAT_NET), str(PROP), "--timeout", "nan"], "--timeout"),
        (["verify", str(SAT_NET), str(PROP), "--timeout", "inf"], "--timeout"),
        (["verify", "--batch", "x.csv", "--timeout", "nan"], "--timeout"),
        (["verify", "--batch", "missing.csv"], "cannot read"),
        (["verify", str(SAT_NET), str(PROP), "--device", "gpu"], "unknown device 'gpu'"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("nnbound: error:") and message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the option is valid")
def test_cuda_without_cuda_is_a_clear_error(capsys) -> None:
    code, out, err = run(capsys, "verify", str(SAT_NET), str(PROP), "--device", "cuda")
    assert code == 2 and out == "" and "CUDA is not available" in err


def test_malformed_property_names_its_line(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.vnnlib"
    bad.write_text(
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (* Y_0 Y_0) 1))\n"
    )
    code, _, err = run(capsys, "verify", str(DATA / "onnx" / "test_nano.onnx"), str(bad))
    assert code == 2 and f"{bad}:3:" in err and "non-linear" in err


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "soon"])
def test_batch_rows_with_bad_timeouts_name_their_line(capsys, tmp_path: Path, bad: str) -> None:
    csv_path = tmp_path / "instances.csv"
    csv_path.write_text(f"{SAT_NET},{PROP},60\n{SAT_NET},{PROP},{bad}\n")
    code, out, err = run(capsys, "verify", "--batch", str(csv_path))
    assert code == 2 and out == ""
    assert f"{csv_path}:2:" in err and "timeout" in err and err.count("\n") == 1
