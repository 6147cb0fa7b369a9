"""Sweep plans, task ids, shards and the CLI's handling of bad input (no computation beyond
one four-image CLI run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nnbound.cli.main import main
from nnbound.errors import InputError
from nnbound.sweep import shards
from nnbound.sweep.grid import split_plan
from nnbound.sweep.merge import merge_results
from nnbound.sweep.models import load_sweep_models
from nnbound.sweep.plan import load_plan, plan_from_dict

PLAN = """
results = "out"
models = ["mnist-fc-3layer"]
norms = ["inf", "2"]
targets = ["untargeted", "runnerup"]
seed = 7

[data]
dataset = "mnist100"
start = 5
count = 7
chunk = 3

[settings]
batch_size = 50

[methods.crown]
steps = 12
[methods.clever]
clever_nsamp = 32
"""


def _write(tmp: Path, text: str, name: str = "plan.toml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_plan_parses_into_typed_values_and_tasks(tmp_path: Path) -> None:
    plan = load_plan(_write(tmp_path, PLAN))
    assert plan.results == (tmp_path / "out").resolve()
    assert [m.name for m in plan.methods] == ["crown", "clever"]
    crown, clever = plan.methods
    assert crown.settings.steps == 12 and crown.settings.batch_size == 50
    assert clever.settings.clever_nsamp == 32 and clever.settings.seed == 7
    models = load_sweep_models(plan.models)
    tasks = split_plan(plan, models)
    # 1 model x 2 methods x 2 norms x 2 targets x 3 chunks (5-7, 8-10, 11)
    assert len(tasks) == 24 and len({t.task_id for t in tasks}) == 24
    assert sorted({(t.start, t.stop) for t in tasks}) == [(5, 8), (8, 11), (11, 12)]
    assert [t.task_id for t in split_plan(plan, models)] == [t.task_id for t in tasks]


def test_task_ids_change_only_with_what_changes_the_numbers(tmp_path: Path) -> None:
    plan = load_plan(_write(tmp_path, PLAN))
    other = load_plan(_write(tmp_path, PLAN.replace("clever_nsamp = 32", "clever_nsamp = 64")))
    models = load_sweep_models(plan.models)
    a = {t.task_id for t in split_plan(plan, models) if t.method.name == "crown"}
    b = {t.task_id for t in split_plan(other, models) if t.method.name == "crown"}
    assert a == b  # tuning CLEVER keeps the finished CROWN shards
    a = {t.task_id for t in split_plan(plan, models) if t.method.name == "clever"}
    b = {t.task_id for t in split_plan(other, models) if t.method.name == "clever"}
    assert a.isdisjoint(b)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown plan key"),
        ({"methods": ["crown", "magic"]}, "unknown method 'magic'"),
        ({"norms": ["3"]}, "unknown norm"),
        ({"targets": ["someone"]}, "unknown target type"),
        ({"methods": {"crown": {"steps": 1.5}}}, "steps must be a int"),
        ({"methods": {"crown": {"stepz": 3}}}, "stepz: unknown setting"),
        ({"data": {"dataset": "mnist100", "count": 0}}, "count must be an integer >= 1"),
        ({"data": {"dataset": "imagenet9"}}, "unknown dataset"),
        ({"device": "tpu"}, "device must be"),
        ({"models": []}, "models must be a non-empty list"),
    ],
)
def test_bad_plans_are_refused_naming_the_problem(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    raw: dict[str, object] = {
        "models": ["mnist-fc-3layer"],
        "methods": ["crown"],
        "data": {"dataset": "mnist100"},
    }
    raw.update(change)
    with pytest.raises(InputError, match=message):
        plan_from_dict(raw, tmp_path)


def test_shards_appear_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = {"task_id": "t1", "model": "m", "method": "crown", "norm": "inf", "targettype": "u"}
    shards.write_shard(tmp_path, "t1", [rec])
    assert shards.finished_ids(tmp_path) == {"t1"}
    assert shards.read_shard(tmp_path, "t1") == [rec]

    # A writer that dies before the rename leaves no shard, and its temporary file is never
    # taken for one.
    def die(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        shards.write_shard(tmp_path, "t2", [{**rec, "task_id": "t2"}])
    monkeypatch.undo()
    (shards.shard_dir(tmp_path) / ".t3.jsonl.999.tmp").write_text('{"task_id": "t3"')
    assert shards.finished_ids(tmp_path) == {"t1"}

    # A damaged shard (not written by nnbound) is reported by name, not half read.
    (shards.shard_dir(tmp_path) / "t4.jsonl").write_text('{"task_id": "t4", "mod')
    with pytest.raises(InputError, match=r"t4\.jsonl:1: not a JSON record"):
        shards.read_shard(tmp_path, "t4")


def test_cli_runs_resumes_and_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _write(
        tmp_path,
        'models = ["mnist-fc-3layer"]\nreport = false\ndevice = "cpu"\n'
        '[data]\ndataset = "mnist100"\ncount = 4\nchunk = 2\n[methods.crown]\nsteps = 8\n',
    )
    assert main(["sweep", str(plan), "--workers", "0", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["executed"] == 2 and out["records"] == 4 and out["failed"] == {}
    assert main(["sweep", str(plan), "--workers", "0", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["executed"] == 0 and out["skipped"] == 2 and out["records"] == 4
    assert main(["sweep", str(plan), "--dry-run"]) == 0
    assert "2 tasks, 2 finished, 0 to run" in capsys.readouterr().out
    lines = (tmp_path / "results" / "records.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("model,dataset,image")

    for argv, message in [
        (["sweep", str(tmp_path / "nope.toml")], "plan file not found"),
        (["sweep", str(plan), "--workers", "-1"], "--workers must be >= 0"),
        (
            ["sweep", str(_write(tmp_path, "models = [", "bad.toml")), "--workers", "0"],
            "not a valid TOML",
        ),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_merge_keeps_only_the_plans_tasks(tmp_path: Path) -> None:
    plan = plan_from_dict(
        {"models": ["mnist-fc-3layer"], "methods": ["ibp"], "data": {"dataset": "mnist100"}},
        tmp_path,
    )
    tasks = split_plan(plan, load_sweep_models(plan.models))
    stray = {"task_id": "other", "model": "x", "method": "crown", "norm": "inf"}
    shards.write_shard(plan.results, "other", [{**stray, "targettype": "u", "image": 0}])
    merged = merge_results(plan.results, tasks, report=False)
    assert merged.records == [] and merged.missing == [t.task_id for t in tasks]


def test_readme_sweep_plan_is_a_valid_plan(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("cat > plan.toml <<'PLAN'\n") + len("cat > plan.toml <<'PLAN'\n")
    text = readme[start : readme.index("\nPLAN\n", start)]
    plan = load_plan(_write(tmp_path, text))
    tasks = split_plan(plan, load_sweep_models(plan.models))
    assert len(tasks) == 2 * 3 * 2  # models x methods x chunks
