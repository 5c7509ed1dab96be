"""Data collection: bundled datasets and CSV files, including refused input."""

from __future__ import annotations

import numpy as np
import pytest

from agents.work.datasets import collect, dataset_names, load_builtin, load_csv, parse_csv
from agents.work.errors import DataError
from mesh.errors import ConfigError, TooLarge

EXPECTED = {
    "breast_cancer": ((569, 30), "classification", 2),
    "diabetes": ((442, 10), "regression", None),
    "digits": ((1797, 64), "classification", 10),
    "iris": ((150, 4), "classification", 3),
    "wine": ((178, 13), "classification", 3),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_dataset_loads(name: str) -> None:
    shape, task, n_classes = EXPECTED[name]
    d = load_builtin(name)
    assert d["X"].shape == shape
    assert d["X"].dtype == np.float64
    assert d["y"].shape == (shape[0],)
    assert d["task"] == task
    assert len(d["feature_names"]) == shape[1]
    assert d["source"] == f"sklearn:{name}"
    if n_classes is None:
        assert d["y"].dtype == np.float64
        assert d["target_names"] is None
    else:
        assert d["y"].dtype == np.int64
        assert np.unique(d["y"]).size == n_classes == len(d["target_names"])


def test_names_and_unknown_dataset() -> None:
    assert dataset_names() == sorted(EXPECTED)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_builtin("california_housing")


def test_csv_numeric_with_missing_cells(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2.5,0\n,3,1\n4,NA,1\n5,6,0\n")
    d = load_csv(path, target="label")
    assert d["feature_names"] == ["a", "b"]
    assert d["task"] == "classification"
    assert d["target_names"] == ["0", "1"]
    np.testing.assert_array_equal(d["y"], [0, 1, 1, 0])
    assert np.isnan(d["X"][1, 0])
    assert np.isnan(d["X"][2, 1])
    assert d["X"][3].tolist() == [5.0, 6.0]


def test_csv_text_labels_and_regression_target() -> None:
    d = parse_csv(b"x,kind\n1,cat\n2,dog\n3,cat\n", target="kind")
    assert d["target_names"] == ["cat", "dog"]
    assert d["y"].tolist() == [0, 1, 0]
    r = parse_csv("x,price\n1,10.5\n2,11.25\n", target="price")
    assert r["task"] == "regression"
    assert r["y"].tolist() == [10.5, 11.25]
    forced = parse_csv("x,y\n1,0\n2,1\n", target="y", task="regression")
    assert forced["task"] == "regression"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty"),
        ("a,label\n", "no data rows"),
        ("a,b\n1,2\n", "target column 'label'"),
        ("a,label\n1,0\nx,1\n", r"row 3, column 'a'"),
        ("a,label\n1,0\n2\n", "row 3 has 1 fields"),
        ("a,a,label\n1,2,0\n", "repeats"),
        ("a,label\n1,0\n2,\n", "target is missing"),
        ("a,label\n1,0\n2,0\n", "two classes"),
        ("a,label\ninf,0\n2,1\n", "infinite"),
    ],
)
def test_bad_csv_is_refused(content: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        parse_csv(content, target="label")


def test_csv_caps_and_root(tmp_path) -> None:
    big = "a,label\n" + "1,0\n2,1\n" * 50
    with pytest.raises(TooLarge):
        parse_csv(big, target="label", max_rows=10)
    with pytest.raises(TooLarge):
        parse_csv(big, target="label", max_bytes=100)
    with pytest.raises(DataError, match="UTF-8"):
        parse_csv(b"a,label\n\xff,0\n", target="label")
    inside = tmp_path / "ok" / "d.csv"
    inside.parent.mkdir()
    inside.write_text("a,label\n1,0\n2,1\n")
    assert load_csv(inside, target="label", root=tmp_path / "ok")["X"].shape == (2, 1)
    with pytest.raises(ConfigError, match="outside"):
        load_csv(inside, target="label", root=tmp_path / "elsewhere")
    with pytest.raises(DataError, match="cannot read"):
        load_csv(tmp_path / "missing.csv", target="label")


def test_collect_dispatch(tmp_path) -> None:
    assert collect({"dataset": "iris"})["X"].shape == (150, 4)
    assert collect({"csv_data": "a,y\n1,0\n2,1\n", "target": "y"})["y"].tolist() == [0, 1]
    (tmp_path / "f.csv").write_text("a,y\n1,0\n2,1\n")
    assert collect({"csv": str(tmp_path / "f.csv"), "target": "y"}, root=tmp_path)["task"] == (
        "classification"
    )
    with pytest.raises(ConfigError, match="exactly one"):
        collect({"dataset": "iris", "csv": "x.csv"})
    with pytest.raises(ConfigError, match="target"):
        collect({"csv_data": "a,y\n1,0\n"})
