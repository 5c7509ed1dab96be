"""Read workflow and streaming-pipeline specs from a dict, a TOML file or a JSON file.

The accepted shapes are exactly the seed's (see DESIGN.md): a DAG workflow is
``{step: {"agent", "depends_on", "timeout", ...}}``, a streaming pipeline is
``{stage: {"source", "rate"} | {"agent", "pattern", ...extra params}}``; both may be wrapped
as ``{"name": ..., "steps"|"stages": {...}}``. A file is read whole, capped in size, and every
problem is reported at once through :class:`WorkflowSpecError`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from mesh.workflow.model import PipelineSpec, StageSpec, WorkflowSpec, WorkflowSpecError
from mesh.workflow.validate import Catalog, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

MAX_SPEC_BYTES: Final = 4 * 1024 * 1024
PATTERNS: Final = ("request", "streaming", "pubsub", "send")
_RATE_RE: Final = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*(?:/|\s+per\s+)\s*(ms|s|sec|second|min|minute|h|hour)s?\s*$"
)
_RATE_UNITS: Final = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0,
                      "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE_SCALE: Final = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}

SpecSource = Mapping[str, Any] | str | Path


def read_document(source: SpecSource) -> tuple[Mapping[str, Any], str | None, str | None]:
    """Return (raw mapping, default name, source label) from a dict or a .toml/.json path.

    Raises :class:`WorkflowSpecError` for unreadable, oversized or malformed files.
    """
    if isinstance(source, Mapping):
        return source, None, None
    path = Path(source)
    label = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise WorkflowSpecError(
                [f"file is {size} bytes; at most {MAX_SPEC_BYTES} allowed"], source=label
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowSpecError([f"cannot read the file: {exc.strerror or exc}"], source=label)
    except UnicodeDecodeError:
        raise WorkflowSpecError(["the file is not UTF-8 text"], source=label)
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            raw: Any = tomllib.loads(text)
        elif suffix == ".json":
            raw = json.loads(text)
        else:
            raise WorkflowSpecError(
                [f"unknown file type {suffix or '(none)'!r}: use .toml or .json"], source=label
            )
    except tomllib.TOMLDecodeError as exc:
        raise WorkflowSpecError([f"TOML syntax error: {exc}"], source=label)
    except json.JSONDecodeError as exc:
        raise WorkflowSpecError(
            [f"JSON syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}"],
            source=label,
        )
    if not isinstance(raw, Mapping):
        raise WorkflowSpecError(
            [f"the top level must be a table/object, got {type(raw).__name__}"], source=label
        )
    return raw, path.stem, label


def load_spec(source: SpecSource, *, catalog: Catalog | None = None) -> WorkflowSpec:
    """Load and validate a DAG workflow from a dict or a ``.toml``/``.json`` path.

    ``catalog`` (``{agent: actions or None}``) additionally checks agent and action names.
    """
    raw, default_name, label = read_document(source)
    return validate(raw, catalog=catalog, name=default_name, source=label)


def load_pipeline(source: SpecSource) -> PipelineSpec:
    """Load a streaming pipeline (the seed's ticks -> analysis -> prediction -> alerts)."""
    raw, default_name, label = read_document(source)
    problems: list[str] = []
    name = default_name or "pipeline"
    stages_obj: Any = raw
    if isinstance(raw.get("stages"), Mapping):
        stages_obj = raw["stages"]
        for key in raw:
            if key not in ("name", "description", "version", "stages"):
                problems.append(f"unknown top-level key {key!r}")
        if "name" in raw:
            if isinstance(raw["name"], str) and raw["name"].strip():
                name = raw["name"].strip()
            else:
                problems.append("pipeline name must be a non-empty string")
    if not stages_obj:
        problems.append("the pipeline is empty: it needs at least one stage")
    stages = [
        s for s in (_stage(n, body, problems) for n, body in stages_obj.items()) if s is not None
    ]
    if stages and stages[0].source is None:
        problems.append(f"stage {stages[0].name!r}: the first stage must have a 'source'")
    if problems:
        raise WorkflowSpecError(problems, source=label)
    return PipelineSpec(name=name, stages=tuple(stages))


def load_document(source: SpecSource, *, catalog: Catalog | None = None
                  ) -> WorkflowSpec | PipelineSpec:
    """Load either kind, telling them apart by shape (a ``source`` or ``stages`` = pipeline)."""
    raw, _, _ = read_document(source)
    if is_pipeline(raw):
        return load_pipeline(source if not isinstance(source, Mapping) else raw)
    return load_spec(source if not isinstance(source, Mapping) else raw, catalog=catalog)


def is_pipeline(raw: Mapping[str, Any]) -> bool:
    """True when the mapping has the streaming shape rather than the DAG shape."""
    if isinstance(raw.get("stages"), Mapping):
        return True
    body: Mapping[str, Any] = raw["steps"] if isinstance(raw.get("steps"), Mapping) else raw
    return any(isinstance(v, Mapping) and ("source" in v or "pattern" in v) for v in body.values())


def parse_rate(value: Any) -> float:
    """Parse ``"1000/sec"``, ``"5k/s"``, ``"30 per min"`` or a bare number into events/second."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str) and (m := _RATE_RE.match(value)):
        rate = float(m.group(1)) * _RATE_SCALE[m.group(2)] / _RATE_UNITS[m.group(3)]
    else:
        raise ValueError(f"rate must look like '1000/sec' or a number, got {value!r}")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be positive, got {value!r}")
    return rate


def _stage(name: Any, body: Any, problems: list[str]) -> StageSpec | None:
    where = f"stage {name!r}"
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: stage names must be non-empty strings")
        return None
    if not isinstance(body, Mapping):
        problems.append(f"{where}: must be a table/object, got {type(body).__name__}")
        return None
    before = len(problems)
    params = {k: v for k, v in body.items() if k not in ("agent", "source", "pattern", "rate")}
    agent, source = body.get("agent"), body.get("source")
    if (agent is None) == (source is None):
        problems.append(f"{where}: needs exactly one of 'agent' or 'source'")
    for key, val in (("agent", agent), ("source", source)):
        if val is not None and (not isinstance(val, str) or not val.strip()):
            problems.append(f"{where}: {key} must be a non-empty string, got {val!r}")
    pattern = body.get("pattern", "request")
    if pattern not in PATTERNS:
        problems.append(f"{where}: pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    rate: float | None = None
    if "rate" in body:
        try:
            rate = parse_rate(body["rate"])
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if len(problems) > before:
        return None
    return StageSpec(name=name, agent=agent, source=source, pattern=pattern, rate=rate,
                     params=params)
