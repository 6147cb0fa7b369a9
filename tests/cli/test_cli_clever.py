"""``nnbound clever``, run in-process: the reference's output lines, the JSON record, the
two-step flow through a sample file, and one error line with exit code 2 on bad input."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import random_network
from nnbound.cli.main import main
from nnbound.network import Network, save_network

FAST = ["-N", "16", "-i", "12", "--method", "maxsamp", "--quiet"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_and_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A random tanh net 64-16-10 on [-0.5, 0.5] (no training: fast) and 4 inputs whose
    labels are its predictions except row 1 (misclassified: skipped)."""
    d = tmp_path_factory.mktemp("clever")
    net = random_network("tanh", [64, 16, 10], seed=0, dtype=torch.float32, weight_scale=3.0)
    net = Network(net.layers, net.input_shape, (-0.5, 0.5), "tanh-64-16-10")
    save_network(net, d / "tanh.safetensors")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 64)).astype(np.float32)
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    labels[1] = (labels[1] + 1) % 10
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", labels)
    return d / "tanh.safetensors", ["--input", str(d / "x.npy"), "--labels", str(d / "y.npy")]


def test_human_output_ends_with_the_reference_stats_lines(capsys, model_and_inputs) -> None:
    model, inputs = model_and_inputs
    code, out, err = run(
        capsys, "clever", str(model), *inputs, "--numimage", "1", "-N", "16", "-i", "20", "--quiet"
    )
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    stats = lines[-3:]
    for kind, line in zip(("least", "top2", "random"), stats, strict=True):
        m = re.fullmatch(
            rf"\[STATS\]\[L0\] info = {kind}, {kind}_clever_L1 = (\S+), {kind}_clever_L2 = (\S+), "
            rf"{kind}_clever_Li = (\S+)",
            line,
        )
        assert m, line
        l1, l2, li = (float(v) for v in m.groups())
        assert l1 > l2 > li > 0  # ||d||_1 >= ||d||_2 >= ||d||_inf for the same boundary
    assert sum(line.startswith("[DEBUG][L1]") for line in lines) == 3 * 4


def test_json_record_and_untargeted(capsys, model_and_inputs) -> None:
    model, inputs = model_and_inputs
    code, out, _ = run(
        capsys,
        "clever",
        str(model),
        *inputs,
        "--numimage",
        "3",
        "--startimage",
        "1",
        "--targettype",
        "untargeted",
        "--json",
        *FAST,
    )
    assert code == 0
    rec = json.loads(out)
    assert rec["settings"]["nsamp"] == 16 and rec["settings"]["radii"]["2"] == 3.0
    assert rec["skipped"] == [1]  # the misclassified row
    assert [i["index"] for i in rec["images"]] == [2, 3]
    assert rec["settings"]["seed"] == 1215 + 2  # image i samples with seed + i
    img = rec["images"][0]
    assert set(img) >= {"index", "label", "target", "scores", "fits", "per_target"}
    assert img["target"] == "untargeted"
    assert set(img["scores"]) == {"1", "2", "inf"}
    assert len(img["per_target"]) == 9
    for key in ("1", "2", "inf"):
        assert img["scores"][key] == min(t["scores"][key] for t in img["per_target"])
        assert set(img["fits"][key]) >= {"shape", "loc", "scale", "p_value", "fallback", "lip"}
    assert set(rec["avg"]) == {"untargeted"}
    mean = np.mean([i["scores"]["2"] for i in rec["images"]])
    assert rec["avg"]["untargeted"]["2"] == pytest.approx(mean)


def test_class_target_ball_sampling_and_order_two(capsys, model_and_inputs) -> None:
    model, inputs = model_and_inputs
    code, out, _ = run(
        capsys,
        "clever",
        str(model),
        *inputs,
        "--numimage",
        "4",
        "--targettype",
        "0",
        "--sampling",
        "ball",
        "--radius",
        "0.5",
        "--cap",
        "--json",
        *FAST,
    )
    assert code == 0
    rec = json.loads(out)
    assert all(i["target"] == 0 and i["label"] != 0 for i in rec["images"])
    assert all(v <= 0.5 for i in rec["images"] for v in i["scores"].values())
    code, out, _ = run(
        capsys,
        "clever",
        str(model),
        *inputs,
        "--numimage",
        "1",
        "--targettype",
        "top2",
        "--sampling",
        "ball",
        "--norms",
        "inf",
        "--json",
        *FAST,
    )
    scores = json.loads(out)["images"][0]["scores"]
    assert scores["1"] is None and scores["2"] is None and scores["inf"] > 0
    code, out, _ = run(
        capsys,
        "clever",
        str(model),
        *inputs,
        "--numimage",
        "1",
        "--targettype",
        "top2",
        "--order",
        "2",
        "--json",
        "-N",
        "4",
        "-i",
        "3",
        "--quiet",
        "--method",
        "maxsamp",
    )
    assert code == 0
    img = json.loads(out)["images"][0]
    assert img["scores"]["2"] > 0 and img["scores"]["1"] is None


def test_save_samples_then_from_samples_gives_the_same_scores(
    capsys, model_and_inputs, tmp_path: Path
) -> None:
    model, inputs = model_and_inputs
    path = tmp_path / "s.npz"
    code, out1, _ = run(
        capsys,
        "clever",
        str(model),
        *inputs,
        "--numimage",
        "1",
        "--targettype",
        "top2,least",
        "-N",
        "16",
        "-i",
        "15",
        "--quiet",
        "--json",
        "--save-samples",
        str(path),
    )
    assert code == 0 and path.exists()
    with np.load(path, allow_pickle=False) as z:
        assert z["maxima"].shape == (2, 3, 15)
    code, out2, _ = run(capsys, "clever", "--from-samples", str(path), "--json", "--quiet")
    assert code == 0
    a, b = json.loads(out1), json.loads(out2)
    assert [i["scores"] for i in a["images"]] == [i["scores"] for i in b["images"]]
    assert [i["kind"] for i in b["images"]] == ["least", "top2"]
    # refit the same samples with another method
    code, out3, _ = run(
        capsys, "clever", "--from-samples", str(path), "--method", "maxsamp", "--quiet"
    )
    assert code == 0 and out3.strip().splitlines()[-1].startswith("[STATS][L0] info = top2")


@pytest.mark.parametrize(
    "extra",
    [
        ["--niters", "0"],
        ["--nsamp", "0"],
        ["--sample-norm", "3"],
        ["--transform", "blur"],
        ["--targettype", "worst"],
        ["--targettype", "12"],
        ["--batch-size", "0"],
        ["--from-samples", "/nonexistent/s.npz"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, model_and_inputs, extra: list[str]) -> None:
    model, inputs = model_and_inputs
    code, out, err = run(capsys, "clever", str(model), *inputs, "--numimage", "1", *FAST, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("nnbound: error:")


def test_no_model_and_not_a_sample_file(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "clever", "--quiet")
    assert code == 2 and "MODEL" in err
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    code, _, err = run(capsys, "clever", "--from-samples", str(bad))
    assert code == 2 and "not an nnbound CLEVER sample file" in err
