"""Every CLI command that takes ``--device`` runs on the accelerator, names it in its JSON
record, and reports the CPU's numbers (run in-process, as ``tests/cli`` does)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gpu_cases import ATOL64, RTOL64, SEARCH_TOL

from helpers import random_network
from nnbound.cli.main import build_parser, main
from nnbound.network import Network, save_network

DATA = Path(__file__).resolve().parents[1] / "data"
Fields = Callable[[dict[str, Any]], list[float]]

# Per command: its arguments after the model ("M" = the model file, "IN" = --input/--labels),
# the numbers of its record that must equal the CPU's, and their absolute tolerance.
COMMANDS: dict[str, tuple[list[str], Fields, float]] = {
    "demo": (  # the built-in mnist-fc-3layer in float32 (radii re-certified in float64)
        ["--numimage", "2", "--norms", "i", "--methods", "crown", "--steps", "4"],
        lambda r: r["radius"]["i"]["crown"],
        SEARCH_TOL,
    ),
    "predict": (["M", "--input", "X"], lambda r: [v for row in r["logits"] for v in row], ATOL64),
    "bounds": (
        ["M", "--input", "X", "--eps", "0.01", "--method", "crown"],
        lambda r: [v for key in ("lower", "upper") for row in r[key] for v in row],
        ATOL64,
    ),
    "robustness": (
        ["M", "IN", "--numimage", "2", "--steps", "6"],
        lambda r: [im["radius"] for im in r["images"]],
        SEARCH_TOL,
    ),
    "clever": (  # the samples follow the device's generator: only g(x0) is deterministic
        ["M", "IN", "--numimage", "1", "-N", "16", "-i", "12", "--method", "maxsamp"],
        lambda r: [im["g_x0"] for im in r["images"]],
        ATOL64,
    ),
    "evaluate": (
        [
            "M",
            "IN",
            "--numimage",
            "2",
            "--methods",
            "crown,clever,pgd",
            "--clever-nsamp",
            "16",
            "--clever-niters",
            "10",
            "--pgd-steps",
            "10",
            "--pgd-search-steps",
            "4",
        ],
        lambda r: [v for rec in r["records"] for v in (rec["margin"], rec["certified"]["crown"])],
        SEARCH_TOL,
    ),
    "landscape": (
        ["M", "IN", "--numimage", "2", "--eps", "0.1", "--lipsteps", "1", "--norm", "2"],
        lambda r: [im["max_eps"] for im in r["images"]],
        SEARCH_TOL,
    ),
    "lipschitz": (
        ["M", "IN", "--numimage", "2", "--lipsteps", "2", "--eps", "0.05"],
        lambda r: [v for im in r["images"] for v in im["lipschitz"]],
        ATOL64,
    ),
    "train": (  # the same initial weights and batches; float32 sums in another order
        ["8", "--epochs", "2", "--out", "T"],
        lambda r: [r["test_accuracy"]],
        0.05,
    ),
    "verify": (
        [str(DATA / "onnx" / "test_small.onnx"), str(DATA / "vnncomp" / "test_small.vnnlib")],
        lambda r: [float(r["result"] == "unsat")],
        0.0,
    ),
}
NO_DTYPE = {"demo", "train", "verify"}  # demo, train: float32 only; verify: always float64
NO_PROVENANCE: dict[str, str] = {}


def device_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name
        for name, p in sub.choices.items()
        if any("--device" in a.option_strings for a in p._actions)
    }


def test_every_device_command_is_covered() -> None:
    assert device_commands() == set(COMMANDS)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A random ReLU net 16-12-4 on [0, 1] and two inputs labelled by its predictions."""
    d = tmp_path_factory.mktemp("gpu-cli")
    net = random_network("relu", [16, 12, 4], seed=2, dtype=torch.float32)
    net = Network(net.layers, net.input_shape, (0.0, 1.0), "relu-16-12-4")
    save_network(net, d / "m.safetensors")
    x = np.random.default_rng(0).uniform(0, 1, (2, 16)).astype(np.float32)
    np.save(d / "x.npy", x)
    with torch.no_grad():
        np.save(d / "y.npy", net(torch.from_numpy(x)).argmax(1).numpy())
    files = {"M": str(d / "m.safetensors"), "X": str(d / "x.npy"), "Y": str(d / "y.npy")}
    return {**files, "T": str(d / "trained.safetensors")}


def run_json(
    capsys: pytest.CaptureFixture[str], command: str, files: dict[str, str], device: str
) -> dict[str, Any]:
    argv = [command]
    for a in COMMANDS[command][0]:
        argv += ["--input", files["X"], "--labels", files["Y"]] if a == "IN" else [files.get(a, a)]
    argv += ["--device", device, "--json", "--quiet"]
    if command not in NO_DTYPE:
        argv += ["--dtype", "float64"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"{' '.join(argv)} exited {code}: {err}"
    return json.loads(out)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_runs_on_device_and_matches_cpu(
    capsys: pytest.CaptureFixture[str], dev: torch.device, command: str, files: dict[str, str]
) -> None:
    want = run_json(capsys, command, files, "cpu")
    got = run_json(capsys, command, files, str(dev))
    fields, atol = COMMANDS[command][1], COMMANDS[command][2]
    a, b = np.array(fields(got)), np.array(fields(want))
    assert a.size > 0 and a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=RTOL64, atol=atol, err_msg=command)
    if command == "verify":
        assert got["result"] == want["result"] == "unsat"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=NO_PROVENANCE[c]))
        if c in NO_PROVENANCE
        else c
        for c in sorted(COMMANDS)
    ],
)
def test_json_record_names_the_device(
    capsys: pytest.CaptureFixture[str], dev: torch.device, command: str, files: dict[str, str]
) -> None:
    rec = run_json(capsys, command, files, str(dev))
    assert "provenance" in rec, f"{command}: no provenance in the JSON record"
    named = torch.device(rec["provenance"]["device"])
    assert named.type == dev.type and (dev.index is None or named.index == dev.index)
