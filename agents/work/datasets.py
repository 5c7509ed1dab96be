"""Data collection: scikit-learn's bundled datasets by name, or a numeric CSV.

Only the datasets that ship inside scikit-learn are offered (no ``fetch_*``: an agent must
not reach the internet because a step asked it to). CSV input is untrusted, so every size
has a cap, every cell is parsed strictly, and a failure names the row and column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypedDict

import numpy as np
from sklearn import datasets as _skd

from agents.work.errors import DataError
from mesh.errors import ConfigError, TooLarge

Task = Literal["classification", "regression"]

MAX_CSV_BYTES: Final = 64 * 1024 * 1024
MAX_CSV_ROWS: Final = 1_000_000
MAX_CSV_COLUMNS: Final = 2_000
MAX_CLASSES: Final = 1_000
#: An integer-valued target with at most this many distinct values is taken as classes.
CLASSIFICATION_MAX_DISTINCT: Final = 20
MISSING_TOKENS: Final = frozenset({"", "na", "nan", "null", "none", "?"})


class Dataset(TypedDict):
    """The shape every collection step returns (all values travel over the mesh as-is)."""

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    target_names: list[str] | None
    task: Task
    source: str


_BUILTIN: Final[Mapping[str, tuple[Callable[..., Any], Task]]] = {
    "breast_cancer": (_skd.load_breast_cancer, "classification"),
    "diabetes": (_skd.load_diabetes, "regression"),
    "digits": (_skd.load_digits, "classification"),
    "iris": (_skd.load_iris, "classification"),
    "wine": (_skd.load_wine, "classification"),
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_builtin`."""
    return sorted(_BUILTIN)


def load_builtin(name: str) -> Dataset:
    """Load one of scikit-learn's bundled datasets (no download ever happens)."""
    entry = _BUILTIN.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {dataset_names()}")
    loader, task = entry
    bunch = loader()
    y = np.asarray(bunch.target)
    y = y.astype(np.int64) if task == "classification" else y.astype(np.float64)
    target_names = None
    if task == "classification" and getattr(bunch, "target_names", None) is not None:
        target_names = [str(t) for t in bunch.target_names]
    return Dataset(
        X=np.ascontiguousarray(bunch.data, dtype=np.float64),
        y=y,
        feature_names=[str(f) for f in bunch.feature_names],
        target_names=target_names,
        task=task,
        source=f"sklearn:{name}",
    )


def load_csv(
    path: str | os.PathLike[str],
    *,
    target: str,
    task: Task | None = None,
    root: str | os.PathLike[str] | None = None,
    max_bytes: int = MAX_CSV_BYTES,
    max_rows: int = MAX_CSV_ROWS,
) -> Dataset:
    """Read a CSV file; with ``root`` set, a path that resolves outside it is refused.

    ``root`` exists because the path usually comes from a remote step's params: an agent
    serving files should confine them to one directory.
    """
    real = os.path.realpath(path)
    if root is not None:
        base = os.path.realpath(root)
        if os.path.commonpath([base, real]) != base:
            raise ConfigError(f"CSV path {os.fspath(path)!r} is outside the allowed directory")
    try:
        size = os.path.getsize(real)
        if size > max_bytes:
            raise TooLarge(f"CSV file is {size} bytes; the cap is {max_bytes}")
        with open(real, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise DataError(f"cannot read CSV {os.fspath(path)!r}: {exc.strerror or exc}")
    return parse_csv(
        data, target=target, task=task, source=f"csv:{os.fspath(path)}",
        max_bytes=max_bytes, max_rows=max_rows,
    )


def parse_csv(
    data: bytes | str,
    *,
    target: str,
    task: Task | None = None,
    source: str = "csv:<bytes>",
    max_bytes: int = MAX_CSV_BYTES,
    max_rows: int = MAX_CSV_ROWS,
) -> Dataset:
    """Parse CSV content (header row first); features must be numeric, blanks are NaN.

    The target may be numeric or text; text targets (and ``task="classification"``) are
    encoded as class indices with ``target_names`` giving the labels. With ``task`` unset,
    a text target or an integer target with few distinct values means classification.
    """
    if task not in (None, "classification", "regression"):
        raise ConfigError(f"task must be 'classification' or 'regression', not {task!r}")
    if len(data) > max_bytes:
        raise TooLarge(f"CSV content is {len(data)} bytes; the cap is {max_bytes}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"CSV is not UTF-8 (byte {exc.start})")
    rows = csv.reader(io.StringIO(data, newline=""), strict=True)
    try:
        header = next(rows, None)
        if header is None or not any(h.strip() for h in header):
            raise DataError("CSV is empty (no header row)")
        header = [h.strip() for h in header]
        _check_header(header, target)
        t_col = header.index(target)
        f_cols = [i for i in range(len(header)) if i != t_col]
        features: list[list[float]] = []
        raw_target: list[str] = []
        for line_no, row in enumerate(rows, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"row {line_no} has {len(row)} fields; the header has {len(header)}"
                )
            if len(features) >= max_rows:
                raise TooLarge(f"CSV has more than {max_rows} data rows")
            features.append([_cell(row[i], line_no, header[i]) for i in f_cols])
            raw_target.append(row[t_col].strip())
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}")
    if not features:
        raise DataError("CSV has a header but no data rows")
    X = np.asarray(features, dtype=np.float64).reshape(len(features), len(f_cols))
    y, target_names, task = _encode_target(raw_target, task)
    return Dataset(
        X=X, y=y, feature_names=[header[i] for i in f_cols], target_names=target_names,
        task=task, source=source,
    )


def collect(params: Mapping[str, Any], *, root: str | os.PathLike[str] | None = None) -> Dataset:
    """The data-collection step: ``{"dataset": "iris"}`` or ``{"csv": path, "target": col}``.

    ``{"csv_data": bytes|str, "target": col}`` takes the CSV content inline instead.
    """
    if not isinstance(params, Mapping):
        raise ConfigError("collect params must be a mapping")
    given = [k for k in ("dataset", "csv", "csv_data") if params.get(k) is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of 'dataset', 'csv' or 'csv_data'")
    if given[0] == "dataset":
        return load_builtin(params["dataset"])
    target = params.get("target")
    if not isinstance(target, str) or not target:
        raise ConfigError("a CSV source needs 'target', the name of the target column")
    task = params.get("task")
    if given[0] == "csv":
        return load_csv(params["csv"], target=target, task=task, root=root)
    content = params["csv_data"]
    if not isinstance(content, (bytes, str)):
        raise ConfigError("'csv_data' must be bytes or str")
    return parse_csv(content, target=target, task=task)


def _check_header(header: list[str], target: str) -> None:
    if len(header) > MAX_CSV_COLUMNS:
        raise TooLarge(f"CSV has {len(header)} columns; the cap is {MAX_CSV_COLUMNS}")
    if len(header) < 2:
        raise DataError("CSV needs at least one feature column and the target column")
    if any(not h for h in header):
        raise DataError("CSV header has an empty column name")
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"CSV header repeats column names: {dupes}")
    if target not in header:
        raise DataError(f"target column {target!r} is not in the CSV header {header[:20]}")


def _cell(text: str, line_no: int, column: str) -> float:
    s = text.strip()
    if s.lower() in MISSING_TOKENS:
        return math.nan
    try:
        value = float(s)
    except ValueError:
        raise DataError(f"row {line_no}, column {column!r}: {s[:40]!r} is not a number")
    if math.isinf(value):
        raise DataError(f"row {line_no}, column {column!r}: infinite value")
    return value


def _encode_target(raw: list[str], task: Task | None) -> tuple[np.ndarray, list[str] | None, Task]:
    if any(v.lower() in MISSING_TOKENS for v in raw):
        first = next(i for i, v in enumerate(raw) if v.lower() in MISSING_TOKENS)
        raise DataError(f"target is missing in data row {first + 1}")
    try:
        numeric = np.array([float(v) for v in raw], dtype=np.float64)
    except ValueError:
        numeric = None
    if numeric is not None and not np.all(np.isfinite(numeric)):
        raise DataError("target has non-finite values")
    if task is None:
        if numeric is None:
            task = "classification"
        else:
            integral = bool(np.all(numeric == np.round(numeric)))
            few = np.unique(numeric).size <= CLASSIFICATION_MAX_DISTINCT
            task = "classification" if integral and few else "regression"
    if task == "regression":
        if numeric is None:
            raise DataError("a regression target must be numeric")
        return numeric, None, task
    labels = np.unique(numeric) if numeric is not None else np.unique(np.array(raw))
    if labels.size > MAX_CLASSES:
        raise DataError(f"target has {labels.size} classes; the cap is {MAX_CLASSES}")
    if labels.size < 2:
        raise DataError("a classification target needs at least two classes")
    source = numeric if numeric is not None else np.array(raw)
    y = np.searchsorted(labels, source).astype(np.int64)
    names = [_label_name(v) for v in labels.tolist()]
    return y, names, task


def _label_name(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
