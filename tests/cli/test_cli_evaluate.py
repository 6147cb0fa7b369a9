"""``nnbound evaluate`` in-process: the sandwich table, --json / --csv records, clear one-line
errors (exit 2), exit 1 on a certified radius above an attack distance, and the HTML report,
rendered in headless Chromium when it is installed (the screenshot must not be blank)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnbound.cli.main import main

# Small budgets: the point here is the command, the numbers are tested in tests/unit.
FAST = [
    "--numimage",
    "2",
    "--steps",
    "8",
    "--pgd-steps",
    "15",
    "--pgd-search-steps",
    "6",
    "--cw-steps",
    "40",
    "--cw-binary-steps",
    "3",
    "--quiet",
]
CHROMIUM = "/usr/bin/chromium"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_and_summary(capsys) -> None:
    code, out, err = run(
        capsys, "evaluate", "mnist-fc-3layer", "--norm", "2", "--methods", "crown,ibp,pgd,cw", *FAST
    )
    assert code == 0, err
    streamed = [v for v in out.splitlines() if v.startswith("[image] ")]
    assert len(streamed) == 2 and streamed[0].startswith("[image] #0: label = ")
    lines = [v for v in out.splitlines() if not v.startswith("[image] ")]
    header = lines[0].split()
    assert header == ["index", "label", "target", "margin", "crown", "ibp", "pgd", "cw", "verdict"]
    assert lines[2].split()[-1] in ("ok", "clever_below_certified")
    assert "[sandwich] model = mnist-fc-3layer, norm = L2, images = 2" in out
    assert "BUG certified>attack = 0" in out
    assert "certified (lower bound)" in out and "attack (upper bound)" in out
    assert err == ""  # --quiet: nothing on stderr


def test_json_records_with_provenance(capsys) -> None:
    code, out, _ = run(
        capsys, "evaluate", "mnist-fc-3layer", "--methods", "crown,pgd", "--json", *FAST
    )
    assert code == 0
    d = json.loads(out)
    assert d["model"] == "mnist-fc-3layer" and d["norm"] == "inf"
    assert d["provenance"]["torch_version"] == torch.__version__
    assert len(d["records"]) == 2
    for r in d["records"]:
        assert r["target"] == "untargeted"
        assert 0 < r["certified"]["crown"] <= r["attacks"]["pgd"] < float("inf")
        assert r["verdict"] == "ok"
    assert set(d["stage_seconds"]) == {"crown", "pgd"}


def test_csv_rows(capsys) -> None:
    code, out, _ = run(
        capsys,
        "evaluate",
        "mnist-fc-3layer",
        "--methods",
        "crown,pgd",
        "--norm",
        "1",
        "--csv",
        *FAST,
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2
    for r in rows:
        assert float(r["crown"]) <= float(r["pgd"]) and r["norm"] == "1"
        assert r["verdict"] == "ok" and float(r["crown_seconds"]) >= 0


def test_targeted_with_clever(capsys) -> None:
    pytest.importorskip("nnbound.clever")
    code, out, err = run(
        capsys,
        "evaluate",
        "mnist-fc-3layer",
        "--targettype",
        "least",
        "--methods",
        "crown,clever,pgd",
        "--norm",
        "2",
        "--clever-nsamp",
        "16",
        "--clever-niters",
        "8",
        "--json",
        *FAST,
    )
    assert code == 0, err
    d = json.loads(out)
    for r in d["records"]:
        assert isinstance(r["target"], int) and r["target"] != r["label"]
        assert r["clever"] > 0
        # CLEVER-vs-attack is reported in the verdict, never an error.
        assert r["verdict"] in (
            "ok",
            "clever_above_attack",
            "clever_below_certified",
            "clever_above_attack+clever_below_certified",
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "crown,bogus"], "unknown method 'bogus'"),
        (["--norm", "3"], "unknown norm"),
        (["--bounded-input", "--no-attack-clip"], "bounded input"),
        (["--pgd-steps", "0"], "pgd-steps"),
        (["--json", "--csv"], "one of --json and --csv"),
        (["--targettype", "sideways"], "unknown target type"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "evaluate", "mnist-fc-3layer", *FAST, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_clever_unavailable_is_a_clear_error(capsys, monkeypatch) -> None:
    import nnbound.tasks.evaluate as ev_mod

    monkeypatch.setattr(ev_mod, "clever_available", lambda: "nnbound.clever is not importable")
    code, _, err = run(capsys, "evaluate", "mnist-fc-3layer", "--methods", "crown,clever", *FAST)
    assert code == 2 and "--methods clever: nnbound.clever is not importable" in err


def test_a_certified_radius_above_an_attack_is_never_ignored(capsys, monkeypatch) -> None:
    import nnbound.tasks.evaluate as ev_mod

    def unsound(net, x, *a, **k):  # a broken certifier: claims radius 100 everywhere
        return torch.full((x.shape[0],), 100.0, dtype=torch.float64)

    monkeypatch.setattr(ev_mod, "certified_radius", unsound)
    code, out, err = run(capsys, "evaluate", "mnist-fc-3layer", "--methods", "crown,pgd", *FAST)
    assert code == 1
    assert "BUG" in out and "BUG certified>attack = 2" in out
    assert "soundness bug" in err  # even with --quiet


def test_report_without_matplotlib_is_a_clear_error(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "evaluate", "mnist-fc-3layer", "--report", str(tmp_path), *FAST)
    assert code == 2 and out == "" and "pip install 'nnbound[report]'" in err


def test_report_renders_in_headless_chromium(capsys, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rep = tmp_path / "report"
    code, _, err = run(
        capsys,
        "evaluate",
        "mnist-fc-3layer",
        "--methods",
        "crown,ibp,pgd,cw",
        "--report",
        str(rep),
        *FAST,
    )
    assert code == 0, err
    page = rep / "index.html"
    html = page.read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html
    assert (rep / "sandwich.png").stat().st_size > 5000
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("chromium is not installed (apt-get install chromium): HTML not rendered")
    exe = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert shot.exists(), res.stderr[-2000:]
    from matplotlib import image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    # A blank (all-white) page has zero variance; the plots and table give plenty.
    assert float(pixels[..., :3].var()) > 1e-3
    # Most of the page is drawn content, not background: count non-white pixels.
    assert float((pixels[..., :3].mean(-1) < 0.95).mean()) > 0.02
