"""The sweep plan: which models, images, methods, norms and targets to evaluate, parsed once
from a TOML file into typed values (every error names the key and the file).

A plan::

    results = "results"              # folder for shards, merged table and report (plan-relative)
    models = ["mnist-fc-3layer", "nets/mine.onnx"]   # built-in names or files (plan-relative)
    norms = ["inf", "2"]             # 1 | 2 | inf (i)
    targets = ["untargeted"]         # untargeted | least | runnerup | random | <class>
    device = "auto"                  # auto | cpu | cuda[:N], resolved on each worker
    dtype = "float32"
    seed = 1228
    threads = 1                      # torch CPU threads per task
    report = true                    # HTML sandwich report per model / norm / target

    [data]
    dataset = "mnist100"             # digits | mnist | cifar | mnist100 | cifar100
    data_dir = "MNIST/"              # for mnist / cifar (plan-relative)
    start = 0
    count = 100
    chunk = 25                       # images per task

    [settings]                       # EvaluateSettings for every method
    batch_size = 100

    [methods.crown]                  # one table per method, its own EvaluateSettings
    steps = 15
    [methods.clever]
    clever_nsamp = 128
    [methods.pgd]

``methods = ["crown", "pgd"]`` (a list, default settings) is accepted as well.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nnbound.data.registry import DATASETS
from nnbound.errors import InputError
from nnbound.sets.norms import norm_name, parse_norm
from nnbound.tasks.evaluate import EvaluateSettings, method_kind
from nnbound.tasks.targets import parse_target_type

TOP_LEVEL_KEYS = frozenset(
    {
        "results",
        "models",
        "methods",
        "norms",
        "targets",
        "device",
        "dtype",
        "seed",
        "threads",
        "report",
        "data",
        "settings",
    }
)
DATA_KEYS = frozenset({"dataset", "data_dir", "start", "count", "chunk"})
DTYPES = ("float32", "float64")

# Which EvaluateSettings fields change each kind of method's numbers: a method's task id and
# its records carry only these, so tuning CLEVER does not invalidate finished CROWN shards.
_CERTIFIED_FIELDS = ("eps0", "steps", "bounded_input", "batch_size")
_FIELDS_BY_METHOD: dict[str, tuple[str, ...]] = {
    "clever": ("clever_nsamp", "clever_niters", "clever_batch", "clever_share", "seed"),
    "pgd": (
        "pgd_steps",
        "pgd_restarts",
        "pgd_search_steps",
        "attack_clip",
        "seed",
        "batch_size",
    ),
    "cw": ("cw_binary_steps", "cw_steps", "cw_lr", "cw_const", "attack_clip", "seed", "batch_size"),
    "ead": (
        "ead_binary_steps",
        "ead_steps",
        "ead_lr",
        "ead_const",
        "ead_beta",
        "attack_clip",
        "seed",
        "batch_size",
    ),
    "recurjac": (*_CERTIFIED_FIELDS, "jacobian_lipsteps"),
    "fastlip": (*_CERTIFIED_FIELDS, "jacobian_lipsteps"),
}


def relevant_settings(method: str, settings: EvaluateSettings) -> dict[str, Any]:
    """The settings that determine ``method``'s results (for task ids and records)."""
    names = _FIELDS_BY_METHOD.get(method, _CERTIFIED_FIELDS)
    return {n: getattr(settings, n) for n in names}


@dataclass(frozen=True)
class MethodSpec:
    """One method of the plan and the settings it runs with."""

    name: str
    settings: EvaluateSettings

    @property
    def kind(self) -> str:
        return method_kind(self.name)


@dataclass(frozen=True)
class DataSpec:
    """Images ``start .. start + count - 1`` of ``dataset``, ``chunk`` per task."""

    dataset: str
    data_dir: Path | None
    start: int
    count: int
    chunk: int


@dataclass(frozen=True)
class SweepPlan:
    """A parsed plan (see the module docstring). Paths are absolute."""

    source: Path | None
    results: Path
    models: tuple[str, ...]
    data: DataSpec
    methods: tuple[MethodSpec, ...]
    norms: tuple[float, ...]
    targets: tuple[str, ...]
    device: str
    dtype: str
    seed: int
    threads: int
    report: bool


def _where(source: Path | None) -> str:
    return f" in {source}" if source is not None else ""


def _int(value: Any, key: str, source: Path | None, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{key} must be an integer >= {minimum}, got {value!r}{_where(source)}")
    return value


def _str_list(value: Any, key: str, source: Path | None) -> list[str]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError(f"{key} must be a non-empty list{_where(source)}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise InputError(f"{key}: {v!r} is not a name{_where(source)}")
        out.append(str(v).strip())
    if len(set(out)) != len(out):
        raise InputError(f"{key} lists a name twice: {out}{_where(source)}")
    return out


def _settings(
    table: Any, base: EvaluateSettings, key: str, source: Path | None
) -> EvaluateSettings:
    if not isinstance(table, dict):
        raise InputError(f"[{key}] must be a table of settings{_where(source)}")
    known = {f.name: f for f in fields(EvaluateSettings)}
    changes: dict[str, Any] = {}
    for name, value in table.items():
        if name not in known:
            raise InputError(
                f"[{key}] {name}: unknown setting{_where(source)}; known: "
                f"{', '.join(sorted(known))}"
            )
        default = getattr(base, name)
        # TOML has distinct int/float/bool types; refuse a value of another type than the
        # setting's (e.g. steps = 1.5) here rather than deep inside a worker.
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            raise InputError(
                f"[{key}] {name} must be a {type(default).__name__}, got {value!r}{_where(source)}"
            )
        changes[name] = value
    try:
        out = EvaluateSettings(**{**{f: getattr(base, f) for f in known}, **changes})
        out.check()
    except InputError as exc:
        raise InputError(f"[{key}]: {exc}{_where(source)}") from None
    return out


def _methods(value: Any, base: EvaluateSettings, source: Path | None) -> tuple[MethodSpec, ...]:
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = [(m, {}) for m in _str_list(value, "methods", source)]
    if not items:
        raise InputError(f"methods is empty{_where(source)}")
    out = []
    for raw, table in items:
        name = str(raw).strip().lower()
        try:
            method_kind(name)
        except InputError as exc:
            raise InputError(f"methods: {exc}{_where(source)}") from None
        out.append(MethodSpec(name, _settings(table, base, f"methods.{name}", source)))
    return tuple(out)


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _model_entry(value: str, base: Path) -> str:
    """A file path (plan-relative) when such a file exists or the entry looks like a path,
    else the name as given (a built-in model)."""
    candidate = _resolve(value, base)
    if candidate.is_file() or "/" in value or "\\" in value or Path(value).suffix:
        return str(candidate)
    return value


def _data(value: Any, base: Path, source: Path | None) -> DataSpec:
    if not isinstance(value, dict):
        raise InputError(f"[data] must be a table (dataset, start, count, chunk){_where(source)}")
    unknown = set(value) - DATA_KEYS
    if unknown:
        raise InputError(
            f"[data] unknown key(s) {', '.join(sorted(unknown))}{_where(source)}; known: "
            f"{', '.join(sorted(DATA_KEYS))}"
        )
    if "dataset" not in value:
        raise InputError(f"[data] needs dataset = one of {', '.join(DATASETS)}{_where(source)}")
    dataset = str(value["dataset"]).strip().lower()
    if dataset not in DATASETS and dataset != "cifar10":
        raise InputError(
            f"[data] unknown dataset {dataset!r}{_where(source)}; available: {', '.join(DATASETS)}"
        )
    data_dir = value.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise InputError(f"[data] data_dir must be a path{_where(source)}")
    count = _int(value.get("count", 10), "[data] count", source, 1)
    return DataSpec(
        dataset=dataset,
        data_dir=_resolve(data_dir, base) if data_dir else None,
        start=_int(value.get("start", 0), "[data] start", source, 0),
        count=count,
        chunk=_int(value.get("chunk", min(count, 25)), "[data] chunk", source, 1),
    )


def plan_from_dict(raw: dict[str, Any], base: Path, source: Path | None = None) -> SweepPlan:
    """A :class:`SweepPlan` from the plan's table ``raw``; relative paths resolve against
    ``base`` (the plan file's folder)."""
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise InputError(
            f"unknown plan key(s) {', '.join(sorted(unknown))}{_where(source)}; known: "
            f"{', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    for key in ("models", "methods", "data"):
        if key not in raw:
            raise InputError(f"the plan needs {key!r}{_where(source)}")
    base_settings = _settings(raw.get("settings", {}), EvaluateSettings(), "settings", source)
    seed = _int(raw.get("seed", base_settings.seed), "seed", source, 0)
    base_settings = _settings({"seed": seed}, base_settings, "settings", source)
    norms = []
    for n in _str_list(raw.get("norms", ["inf"]), "norms", source):
        try:
            norms.append(parse_norm(n))
        except InputError as exc:
            raise InputError(f"norms: {exc}{_where(source)}") from None
    if len({norm_name(p) for p in norms}) != len(norms):
        raise InputError(f"norms lists a norm twice{_where(source)}")
    targets = []
    for t in _str_list(raw.get("targets", ["untargeted"]), "targets", source):
        try:
            targets.append(str(parse_target_type(t)))
        except InputError as exc:
            raise InputError(f"targets: {exc}{_where(source)}") from None
    dtype = str(raw.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}{_where(source)}")
    device = str(raw.get("device", "auto")).strip().lower()
    if not (device in ("auto", "cpu") or device == "cuda" or device.startswith("cuda:")):
        raise InputError(f"device must be auto, cpu or cuda[:N], got {device!r}{_where(source)}")
    report = raw.get("report", True)
    if not isinstance(report, bool):
        raise InputError(f"report must be true or false, got {report!r}{_where(source)}")
    results = raw.get("results", "results")
    if not isinstance(results, str) or not results:
        raise InputError(f"results must be a folder name{_where(source)}")
    return SweepPlan(
        source=source,
        results=_resolve(results, base),
        models=tuple(_model_entry(m, base) for m in _str_list(raw["models"], "models", source)),
        data=_data(raw["data"], base, source),
        methods=_methods(raw["methods"], base_settings, source),
        norms=tuple(norms),
        targets=tuple(targets),
        device=device,
        dtype=dtype,
        seed=seed,
        threads=_int(raw.get("threads", 1), "threads", source, 1),
        report=report,
    )


def load_plan(path: str | Path) -> SweepPlan:
    """Parse the TOML plan at ``path`` (InputError naming the file and problem)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"plan file not found: {p}")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise InputError(
                "reading a TOML plan needs Python >= 3.11 (tomllib) or `pip install tomli`"
            ) from None
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not a valid TOML plan ({exc})") from None
    return plan_from_dict(raw, p.resolve().parent, p)


def plan_summary(plan: SweepPlan) -> dict[str, Any]:
    """The plan as plain JSON values (written next to the results for provenance)."""
    d = plan.data
    return {
        "source": str(plan.source) if plan.source else None,
        "results": str(plan.results),
        "models": list(plan.models),
        "data": {
            "dataset": d.dataset,
            "data_dir": str(d.data_dir) if d.data_dir else None,
            "start": d.start,
            "count": d.count,
            "chunk": d.chunk,
        },
        "methods": {m.name: relevant_settings(m.name, m.settings) for m in plan.methods},
        "norms": [norm_name(p) for p in plan.norms],
        "targets": list(plan.targets),
        "device": plan.device,
        "dtype": plan.dtype,
        "seed": plan.seed,
        "threads": plan.threads,
    }


__all__ = [
    "DataSpec",
    "MethodSpec",
    "SweepPlan",
    "load_plan",
    "plan_from_dict",
    "plan_summary",
    "relevant_settings",
]
