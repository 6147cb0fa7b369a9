"""``--jacbndalg crown-jacobian`` end to end: ``lipschitz`` (eps = 0 equals the gradient norm,
never above RecurJac's curve on a trained ReLU MLP), ``--jacalpha`` (never above the plain
curve; refused with other methods), ``landscape`` and ``robustness``; a misspelt method is
a usage line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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
def digits_tanh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    net, report = train_network(
        train,
        test,
        TrainConfig(hidden=(16, 16), epochs=3, lr=0.01, activation="tanh"),
        progress=False,
    )
    assert report.test_accuracy > 0.7
    return save_network(net, tmp_path_factory.mktemp("cj") / "digits_tanh.safetensors")


def _curve(capsys, model: Path, method: str, *extra: str) -> dict:
    argv = ["lipschitz", str(model), "--numimage", "2", "--targettype", "untargeted"]
    argv += ["--lipsteps", "3", "--liplogstart", "-3", "--liplogend", "-1", "--norm", "i"]
    code, out, _ = run(capsys, *argv, "--jacbndalg", method, "--json", *extra)
    assert code == 0
    return json.loads(out)


def test_lipschitz_curve_below_recurjac(capsys, digits_tanh: Path) -> None:
    cj = _curve(capsys, digits_tanh, "crown-jacobian")
    rj = _curve(capsys, digits_tanh, "recurjac")
    assert cj["method"] == "crown-jacobian"
    for a, b in zip(cj["images"], rj["images"], strict=True):
        assert a["eps0_matches_gradient"]
        assert a["lipschitz"][0] == pytest.approx(a["grad_norm"], rel=1e-4)
        # eps > 0 (at eps = 0 both are the gradient norm, up to float32 rounding margins)
        pairs = zip(a["lipschitz"][1:], b["lipschitz"][1:], strict=True)
        assert all(x <= y for x, y in pairs)
    # at eps = 0.1 the propagation bound is clearly tighter on this tanh net
    assert cj["avg_lipschitz"][-1] < 0.9 * rj["avg_lipschitz"][-1]


def test_jacalpha_never_above_the_plain_curve(capsys, digits_tanh: Path) -> None:
    plain = _curve(capsys, digits_tanh, "crown-jacobian")
    opt = _curve(capsys, digits_tanh, "crown-jacobian", "--jacalpha", "5")
    assert opt["jacalpha"] == 5 and plain["jacalpha"] == 0
    for a, b in zip(opt["images"], plain["images"], strict=True):
        assert a["lipschitz"][0] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert all(x <= y for x, y in zip(a["lipschitz_raw"], b["lipschitz_raw"], strict=True))


def test_jacalpha_refused_with_other_methods(capsys, digits_tanh: Path) -> None:
    argv = ["lipschitz", str(digits_tanh), "--numimage", "1", "--jacalpha", "3"]
    code, _, err = run(capsys, *argv, "--jacbndalg", "recurjac")
    assert code != 0 and "--jacalpha" in err and "Traceback" not in err


def test_landscape_and_robustness_accept_crown_jacobian(capsys, digits_tanh: Path) -> None:
    code, out, _ = run(
        capsys, "landscape", str(digits_tanh), "--numimage", "1", "--targettype", "untargeted",
        "--norm", "2", "--eps", "0.1", "--lipsteps", "1", "--jacbndalg", "crown-jacobian",
    )  # fmt: skip
    assert code == 0 and out.strip().splitlines()[-1].startswith("[L0] model = ")
    argv = ["robustness", str(digits_tanh), "--numimage", "1", "--targettype", "runnerup"]
    argv += ["--layerbndalg", "crown-general", "--jacbndalg", "crown-jacobian", "--eps", "0.05"]
    code, out, _ = run(capsys, *argv, "--steps", "4", "--lipsteps", "3", "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["jacbndalg"] == "crown-jacobian"
    assert all(im["radius_jacobian"] > 0 for im in rec["images"])


def test_unknown_jacobian_method_is_one_line_exit_2(capsys, digits_tanh: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["lipschitz", str(digits_tanh), "--jacbndalg", "crown-jacobain"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "crown-jacobian" in err and "Traceback" not in err
