"""The Jacobian commands run end to end as a user would, on a digits MLP trained by
``nnbound.train``: ``lipschitz`` (reference summary line, saturation, JSON, eps = 0 equals the
gradient norm), ``landscape`` and ``robustness --jacbndalg``; bad input is one line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: F401  (one torch thread: the machine is small and shared)
from nnbound.cli.main import main
from nnbound.data.registry import load_dataset
from nnbound.network.native import save_network
from nnbound.train.train import TrainConfig, train_network


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    net, report = train_network(
        train, test, TrainConfig(hidden=(16, 16), epochs=3, lr=0.01), progress=False
    )
    assert report.test_accuracy > 0.8
    return save_network(net, tmp_path_factory.mktemp("jac") / "digits_relu.safetensors")


def test_lipschitz_summary_line_and_saturation(capsys, digits_model: Path) -> None:
    argv = ["lipschitz", str(digits_model), "--numimage", "2", "--targettype", "1"]
    argv += ["--lipsteps", "6", "--liplogstart", "-3", "--liplogend", "2", "--norm", "i"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1].startswith(
        f"[L0] model = {digits_model}, numimage = 2, avg_lipschitz[0.00000]"
    )
    assert "avg_lipschitz[100.00000] = " in lines[-1]
    assert "opnorm_global_lipschitz = " in lines[-1]
    assert lines[-2].startswith("[L1] saturated: ") and "global Lipschitz bound" in lines[-2]
    code, out, _ = run(capsys, *argv, "--json", "--jacbndalg", "fastlip")
    rec = json.loads(out)
    assert rec["method"] == "fastlip" and rec["numimage"] == 2 and len(rec["eps"]) == 7
    for im in rec["images"]:
        assert im["label"] == 1 and im["eps0_matches_gradient"]
        assert im["lipschitz"][0] == pytest.approx(im["grad_norm"], rel=1e-4)
        assert im["lipschitz"][-1] <= im["opnorm_global_lipschitz"] * (1 + 1e-5)
        assert im["global_bound"][-1] and not im["global_bound"][0]
    assert rec["saturation"]["global"] is True
    assert rec["avg_lipschitz"][0] == pytest.approx(
        sum(im["lipschitz"][0] for im in rec["images"]) / 2
    )


def test_lipschitz_linear_grid_float64_forward(capsys, digits_model: Path) -> None:
    code, out, _ = run(
        capsys, "lipschitz", str(digits_model), "--numimage", "2", "--eps", "0.02",
        "--lipsteps", "2", "--norm", "2", "--lipsdir", "1", "--lipsshift", "0",
        "--dtype", "float64", "--json",
    )  # fmt: skip
    assert code == 0
    rec = json.loads(out)
    assert rec["eps"] == pytest.approx([0.0, 0.01, 0.02])
    for im in rec["images"]:
        assert im["lipschitz"][0] == pytest.approx(im["grad_norm"], rel=1e-10)
        assert im["lipschitz"][0] <= im["lipschitz"][2] + 1e-12


def test_landscape_summary_line(capsys, digits_model: Path) -> None:
    code, out, _ = run(
        capsys, "landscape", str(digits_model), "--numimage", "2", "--targettype", "1",
        "--norm", "2", "--eps", "0.1", "--lipsteps", "1",
    )  # fmt: skip
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"[L0] model = {digits_model}, numimage = 2, avg_max_eps = ")
    assert ", avg_lipschitz_max = " in last and ", opnorm_global_lipschitz = " in last
    code, out, _ = run(
        capsys, "landscape", str(digits_model), "--numimage", "2", "--targettype", "1",
        "--norm", "2", "--eps", "0.1", "--lipsteps", "1", "--json",
    )  # fmt: skip
    rec = json.loads(out)
    for im in rec["images"]:
        assert 0 < im["max_eps"] <= 10 and im["eps"][-1] == pytest.approx(im["max_eps"])
        assert im["unsure"][-1] < 64
    assert rec["avg_max_eps"] == pytest.approx(sum(i["max_eps"] for i in rec["images"]) / 2)


@pytest.mark.parametrize("jac", ["recurjac", "fastlip"])
def test_robustness_with_jacobian_radius(capsys, digits_model: Path, jac: str) -> None:
    argv = ["robustness", str(digits_model), "--numimage", "2", "--targettype", "runnerup"]
    argv += ["--layerbndalg", "crown-adaptive", "--jacbndalg", jac, "--eps", "0.05"]
    argv += ["--steps", "6", "--lipsteps", "5"]
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["jacbndalg"] == jac and rec["lipsteps"] == 5
    for im in rec["images"]:
        assert im["radius_jacobian"] > 0 and im["radius"] > 0
    avg = sum(im["radius_jacobian"] for im in rec["images"]) / 2
    assert rec["avg_radius_jacobian"] == pytest.approx(avg)
    code, out, _ = run(capsys, *argv)
    last = out.strip().splitlines()[-1]
    assert last == f"[L0] model = {digits_model}, avg robustness_lb = {avg:.5f}, numimage = 2"


def test_plot_without_matplotlib_is_a_clear_error(
    capsys, monkeypatch: pytest.MonkeyPatch, digits_model: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    argv = ["lipschitz", str(digits_model), "--numimage", "1", "--lipsteps", "2"]
    code, out, err = run(capsys, *argv, "--plot", str(tmp_path / "curve.png"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "pip install matplotlib" in err


def test_plot_writes_a_png(capsys, digits_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    argv = ["lipschitz", str(digits_model), "--numimage", "1", "--lipsteps", "2"]
    code, _, _ = run(capsys, *argv, "--plot", str(png), "--liplogstart", "-3")
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lipschitz", "M", "--lipsteps", "0"], "lipsteps"),
        (["lipschitz", "M", "--targettype", "12"], "class 12"),
        (["landscape", "M", "--eps", "0"], "eps"),
        (["landscape", "M", "--layerbndalg", "fastlin", "--targettype", "sideways"], "target"),
        (["robustness", "M", "--jacbndalg", "fastlip", "--layerbndalg", "spectral"], "fastlip"),
        (["robustness", "M", "--jacbndalg", "recurjac", "--lipsteps", "0"], "lipsteps"),
        (["lipschitz", "M", "--dataset", "mnist100"], "shape"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys, digits_model: Path, argv: list[str], message: str
) -> None:
    argv = [str(digits_model) if a == "M" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_fastlip_refuses_smooth_activations(capsys, tmp_path: Path) -> None:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    net, _ = train_network(
        train, test, TrainConfig(hidden=(8,), activation="tanh", epochs=1), progress=False
    )
    path = save_network(net, tmp_path / "tanh.safetensors")
    code, out, err = run(
        capsys, "lipschitz", str(path), "--jacbndalg", "fastlip", "--numimage", "1"
    )
    assert code == 2 and "use recurjac" in err
    code, out, _ = run(capsys, "lipschitz", str(path), "--numimage", "1", "--json")
    assert code == 0 and torch.isfinite(torch.tensor(json.loads(out)["avg_lipschitz"])).all()


class _Residual(torch.nn.Module):
    """``out(relu(h + W relu(h)))``: a skip connection, so not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 16),
            torch.nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x.flatten(1)))
        return self.c(torch.relu(h + self.b(torch.relu(h))))


@pytest.mark.parametrize(
    "argv",
    [
        ("lipschitz", "--numimage", "1"),
        ("landscape", "--numimage", "1", "--eps", "0.1"),
        ("robustness", "--numimage", "1", "--jacbndalg", "recurjac", "--layerbndalg", "crown"),
    ],
)
def test_jacobian_commands_refuse_a_residual_graph(capsys, tmp_path: Path, argv) -> None:
    """Fast-Lip / RecurJac multiply layer Jacobians in sequence: a graph with a skip
    connection is refused up front with the reason, not bounded as if it were a chain."""
    import warnings

    path = tmp_path / "residual.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated (offline-only)
        torch.onnx.export(_Residual().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    code, out, err = run(capsys, argv[0], str(path), "--dataset", "digits", *argv[1:])
    assert code == 2 and out == ""
    assert "defined for sequential networks" in err and "general graph" in err


@pytest.mark.parametrize(
    ("command", "method"),
    [("lipschitz", "recurjac"), ("lipschitz", "crown-jacobian"), ("landscape", "recurjac")],
)
def test_operator_norm_factors_are_built_once_per_run(
    capsys, monkeypatch, digits_model: Path, command: str, method: str
) -> None:
    """Every batch of a run bounds the same network: its operator-norm factors (dense block
    matrices and their norms, seconds on a CNN) are built for the first batch only (crown-
    jacobian caps its values with them too), and each image's baseline is the one a run of
    that image alone reports."""
    from nnbound.bounds import spectral

    built = []
    factors = spectral.spectral_factors

    def counted(net, p):  # type: ignore[no-untyped-def]
        built.append(p)
        return factors(net, p)

    monkeypatch.setattr(spectral, "spectral_factors", counted)
    monkeypatch.setattr("nnbound.tasks.lipschitz.spectral_factors", counted)
    argv = [command, str(digits_model), "--targettype", "1", "--lipsteps", "3", "--norm", "2"]
    argv += ["--jacbndalg", method]
    code, out, _ = run(capsys, *argv, "--numimage", "5", "--batch-size", "2", "--json")
    assert code == 0 and built == [2.0]
    images = json.loads(out)["images"]
    assert len(images) == 5
    last = str(images[-1]["index"])
    code, out, _ = run(capsys, *argv, "--numimage", "1", "--startimage", last, "--json")
    alone = json.loads(out)["images"][0]
    assert images[-1]["index"] == alone["index"]
    assert images[-1]["opnorm_global_lipschitz"] == pytest.approx(
        alone["opnorm_global_lipschitz"], rel=1e-12
    )
