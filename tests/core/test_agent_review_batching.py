"""The inference service's micro-batcher: a row the model cannot take fails its own caller
only, even when no check at submit could see it coming (a finite float64 value too large
for the float32 a tree model predicts in), never the callers sharing its batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agents.work.batching import MicroBatcher
from agents.work.deployment import ModelRegistry


def _forest_registry() -> tuple[ModelRegistry, np.ndarray]:
    """A deployed random forest (no transform, so rows must be finite), and its rows."""
    from agents.work.artifacts import build_artifact
    from agents.work.datasets import load_builtin
    from agents.work.models import train

    d = load_builtin("iris")
    est = train(d["X"], d["y"], model="random_forest", params={"n_estimators": 5})
    reg = ModelRegistry()
    reg.deploy(build_artifact(est, name="iris", version="1", task=d["task"],
                              model="random_forest"))
    return reg, np.asarray(d["X"], dtype=np.float64)


# (numpy warns as it casts the row to float32; then scikit-learn refuses it, as in service)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_a_row_the_model_refuses_fails_only_its_own_caller() -> None:
    reg, x = _forest_registry()
    huge = x[1].copy()
    huge[0] = 1e39  # finite as float64: passes the row rule; float32 overflows

    async def main() -> tuple[list[object], dict[str, int]]:
        # (as the inference service builds it; max_batch 3 with a long delay: the three
        # rows are one batch, sent when the third arrives)
        batcher = MicroBatcher(lambda X: list(reg.predict(X)["predictions"]), max_batch=3,
                               max_delay_ms=5000, offload=True, rule=reg.row_rule)
        async with batcher as b:
            got = await asyncio.gather(b.submit(x[0]), b.submit(huge), b.submit(x[100]),
                                       return_exceptions=True)
            return got, b.stats()

    (first, bad, last), stats = asyncio.run(main())
    assert first == reg.predict(x[:1])["predictions"][0]
    assert last == reg.predict(x[100:101])["predictions"][0]
    assert isinstance(bad, ValueError)
    assert "float32" in str(bad)
    assert stats["split_batches"] == 1
    assert stats["rows"] == 2
