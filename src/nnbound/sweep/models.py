"""The sweep's models: loaded once by the driver, identified by the hash of their bytes.

The hash goes into every task id and record, so a model file whose weights change gets new
tasks instead of silently reusing results computed on the old weights.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from nnbound.network.graph import Graph
from nnbound.network.network import Network

Model = Network | Graph


@dataclass(frozen=True, eq=False)
class SweepModel:
    """A loaded model: ``entry`` as the plan names it, a short ``label`` for task ids and
    tables, the sha256 of its file (or, for a built-in name, of the packaged file)."""

    entry: str
    label: str
    sha256: str
    net: Model


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _builtin_file(name: str) -> Path | None:
    from importlib import resources

    p = Path(str(resources.files("nnbound") / "assets" / "models" / f"{name}.safetensors"))
    return p if p.is_file() else None


def model_sha256(entry: str) -> str:
    """sha256 of the model file ``entry`` names (a path, or a built-in model's packaged file);
    for a catalogue architecture (seeded random weights) the hash of its name."""
    path = Path(entry)
    if path.is_file():
        return _file_sha256(path)
    builtin = _builtin_file(entry)
    if builtin is not None:
        return _file_sha256(builtin)
    return hashlib.sha256(f"catalogue:{entry}".encode()).hexdigest()


def model_label(entry: str) -> str:
    """A file-name-safe short name: the built-in name or the file's stem."""
    stem = Path(entry).stem if Path(entry).suffix else Path(entry).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "model"


def load_sweep_model(entry: str) -> SweepModel:
    """Load ``entry`` (built-in name or file) on the CPU in float32; the worker moves it to
    the plan's device and dtype."""
    from nnbound.network.load import load_model

    net = load_model(entry)
    if net.input_range is None:
        from nnbound.errors import InputError

        raise InputError(
            f"{entry} stores no input range (the data domain eps is measured in); save it with "
            "one (e.g. nnbound's .safetensors) before sweeping it"
        )
    return SweepModel(entry, model_label(entry), model_sha256(entry), net)


def load_sweep_models(entries: tuple[str, ...]) -> list[SweepModel]:
    """Every model of the plan; two entries with the same label get the hash appended."""
    models = [load_sweep_model(e) for e in entries]
    labels = [m.label for m in models]
    out = []
    for m in models:
        if labels.count(m.label) > 1:
            m = SweepModel(m.entry, f"{m.label}-{m.sha256[:8]}", m.sha256, m.net)
        out.append(m)
    return out


__all__ = ["Model", "SweepModel", "load_sweep_model", "load_sweep_models", "model_sha256"]
