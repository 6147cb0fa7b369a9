"""Every count, size, radius and timeout is checked at the edge (issue 19 #6): a bad value is
one line naming the flag and exit code 2, before any work; each case here ended in a
traceback, a hang or a silently wrong answer before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnbound.cli.main import main
from nnbound.network.layers import Activation, Flatten
from nnbound.network.native import save_network
from nnbound.network.network import Network

DATA = Path(__file__).resolve().parents[1] / "data"
NET, PROP = DATA / "onnx" / "test_sat.onnx", DATA / "vnncomp" / "test_prop.vnnlib"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _fails(capsys, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", err
    assert err.startswith("nnbound: error:") and message in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def empty_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("x") / "empty.npy"
    np.save(path, np.zeros((0, 1, 28, 28), np.float32))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["bounds", "mnist-fc-3layer", "--eps", "0.01"],
        ["predict", "mnist-fc-3layer"],
        ["robustness", "mnist-fc-3layer"],
        ["evaluate", "mnist-fc-3layer", "--methods", "pgd"],
    ],
)
def test_an_empty_batch_is_refused(capsys, empty_batch: Path, argv: list[str]) -> None:
    _fails(capsys, [*argv, "--input", str(empty_batch)], "holds no inputs (0 images)")


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("clever", "--numimage"),
        ("robustness", "--numimage"),
        ("evaluate", "--numimage"),
        ("lipschitz", "--numimage"),
        ("landscape", "--numimage"),
        ("clever", "--batch-size"),
        ("robustness", "--batch-size"),
        ("evaluate", "--batch-size"),
        ("lipschitz", "--batch-size"),
    ],
)
def test_counts_below_one_are_refused(capsys, command: str, flag: str, value: str) -> None:
    _fails(capsys, [command, "mnist-fc-3layer", flag, value], f"{flag} must be an integer >= 1")


@pytest.mark.parametrize("eps", ["inf", "nan", "-0.1"])
def test_eps_must_be_finite_and_nonnegative(capsys, eps: str) -> None:
    argv = ["bounds", "mnist-fc-3layer", "--input", "x.npy", f"--eps={eps}"]
    _fails(capsys, argv, "--eps must be")


def test_a_search_start_eps_of_zero_is_refused(capsys) -> None:
    _fails(capsys, ["robustness", "mnist-fc-3layer", "--eps", "0"], "--eps must be > 0")


@pytest.mark.parametrize("timeout", ["nan", "0", "-5", "inf"])
def test_verify_timeout_must_be_finite_and_positive(capsys, timeout: str) -> None:
    _fails(capsys, ["verify", str(NET), str(PROP), f"--timeout={timeout}"], "--timeout must be")


def test_a_report_path_that_is_a_file_is_refused_before_the_work(capsys, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    existing = tmp_path / "report.html"
    existing.write_text("mine")
    _fails(
        capsys,
        ["evaluate", "mnist-fc-3layer", "--report", str(existing)],
        "exists and is not a folder",
    )
    assert existing.read_text() == "mine"


def test_an_eps_that_overflows_float32_is_refused_and_json_has_no_nan(capsys, tmp_path) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32))
    _fails(capsys, ["bounds", "mnist-fc-3layer", "--input", str(x), "--eps", "1e38"], "too large")
    code, out, _ = run(
        capsys, "bounds", "mnist-fc-3layer", "--input", str(x), "--eps", "1e18", "--json"
    )

    def no_constant(name: str) -> float:
        raise AssertionError(f"{name} in the JSON")

    rec = json.loads(out, parse_constant=no_constant)
    assert code == 0 and rec["lower"][0][0] < -1e18 < 1e18 < rec["upper"][0][0]


def test_a_channels_last_array_is_refused_naming_the_layout(capsys, tmp_path) -> None:
    x = tmp_path / "nhwc.npy"
    np.save(x, np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32))
    code, out, err = run(capsys, "predict", "cifar-2c2f", "--input", str(x))
    assert code == 2 and out == ""
    assert "channels-last" in err and "(N, C, H, W) = (N, 3, 32, 32)" in err


def test_a_weight_free_network_is_bounded_in_float64(capsys, tmp_path) -> None:
    net = Network((Flatten(), Activation("relu")), input_shape=(1, 2, 2), input_range=(-1, 1))
    path = save_network(net, tmp_path / "free.safetensors")
    x = tmp_path / "x.npy"
    np.save(x, np.array([[[[0.5, -0.5], [0.25, 0.0]]]], np.float64))
    for method in ("crown", "ibp", "spectral", "alpha-crown"):
        code, out, err = run(
            capsys,
            "bounds",
            str(path),
            "--input",
            str(x),
            "--eps",
            "0.5",
            "--dtype",
            "float64",
            "--method",
            method,
            "--json",
        )
        assert code == 0, (method, err)
        rec = json.loads(out)
        assert rec["provenance"]["dtype"] == "float64"
        assert rec["upper"][0][0] == pytest.approx(1.0) and rec["lower"][0][1] <= 0.0
    assert net.to(dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("timeout", ["nan", "0", "-1", "inf"])
def test_batch_csv_timeouts_must_be_finite_and_positive(capsys, tmp_path, timeout: str) -> None:
    batch = tmp_path / "b.csv"
    batch.write_text(f"{NET},{PROP},{timeout}\n")
    _fails(capsys, ["verify", "--batch", str(batch)], "b.csv:1: the timeout must be")
