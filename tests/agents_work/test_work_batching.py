"""The micro-batcher: concurrent rows share one predict call; a full queue says so."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agents.work.batching import MicroBatcher
from agents.work.errors import DataError
from mesh.errors import Closed, Overloaded


async def _until_queued(b: MicroBatcher, n: int, max_steps: int = 100) -> None:
    """Yield to the loop until ``n`` rows wait in ``b``'s queue (a bounded number of steps)."""
    for _ in range(max_steps):
        if b.stats()["queued"] == n:
            return
        await asyncio.sleep(0)  # one loop step: lets the submitting tasks run
    assert b.stats()["queued"] == n, f"{n} rows not queued within {max_steps} loop steps"


def test_concurrent_rows_are_predicted_together() -> None:
    sizes: list[int] = []

    def predict(X: np.ndarray) -> np.ndarray:
        sizes.append(X.shape[0])
        return X.sum(axis=1)

    async def main() -> list[float]:
        async with MicroBatcher(predict, max_batch=16, max_delay_ms=50) as b:
            rows = [[float(i), 1.0] for i in range(40)]
            return await asyncio.gather(*(b.submit(r) for r in rows))

    results = asyncio.run(main())
    assert results == [i + 1.0 for i in range(40)]  # each caller got its own row's answer
    assert sum(sizes) == 40
    assert max(sizes) == 16
    assert sizes[:2] == [16, 16]
    assert all(s > 1 for s in sizes)


def test_lone_row_goes_after_the_delay_and_async_predict_fn() -> None:
    calls: list[int] = []

    async def predict(X: np.ndarray) -> list[int]:
        calls.append(len(X))
        return [int(v) for v in X[:, 0] * 2]

    async def main() -> tuple[int, dict]:
        async with MicroBatcher(predict, max_batch=8, max_delay_ms=1) as b:
            return await b.submit([21.0]), b.stats()

    value, stats = asyncio.run(main())
    assert value == 42
    assert calls == [1]
    assert stats["batches"] == 1
    assert stats["rows"] == 1


def test_full_queue_raises_overloaded() -> None:
    async def main() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def slow(X: np.ndarray) -> np.ndarray:
            entered.set()
            await release.wait()
            return X[:, 0]

        b = MicroBatcher(slow, max_batch=2, max_delay_ms=0, max_queue=3)
        first = [asyncio.create_task(b.submit([float(i)])) for i in range(2)]
        await entered.wait()  # those two are now being predicted, out of the queue
        queued = [asyncio.create_task(b.submit([float(i)])) for i in range(2, 5)]
        await _until_queued(b, 3)  # the three tasks have enqueued
        with pytest.raises(Overloaded):
            await b.submit([9.0])
        assert b.stats()["rejected"] == 1
        assert b.stats()["queued"] == 3
        release.set()
        assert await asyncio.gather(*first, *queued) == [0.0, 1.0, 2.0, 3.0, 4.0]
        await b.aclose()

    asyncio.run(main())


def test_errors_reach_every_caller_and_bad_rows_only_their_own() -> None:
    def boom(X: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded")

    def ok(X: np.ndarray) -> np.ndarray:
        return X[:, 0]

    async def main() -> None:
        async with MicroBatcher(boom, max_delay_ms=5) as b:
            res = await asyncio.gather(b.submit([1.0]), b.submit([2.0]), return_exceptions=True)
            assert all(isinstance(r, ValueError) for r in res)
        async with MicroBatcher(ok, max_delay_ms=5, n_features=2) as b:
            good = asyncio.create_task(b.submit([1.0, 2.0]))
            with pytest.raises(DataError, match="3 values"):
                await b.submit([1.0, 2.0, 3.0])
            assert await good == 1.0
        closing = MicroBatcher(ok, max_delay_ms=1000)
        pending = asyncio.create_task(closing.submit([5.0, 5.0]))
        await _until_queued(closing, 1)  # the row waits in the queue (1 s batching delay)
        await closing.aclose()
        with pytest.raises(Closed, match="before this row ran"):  # failed while queued
            await pending
        with pytest.raises(Closed):
            await closing.submit([1.0, 1.0])

    asyncio.run(main())


def _artifact(dataset: str, *, impute: bool) -> tuple[dict, np.ndarray]:
    """A small real model artifact, and its raw rows; ``impute``: keep the training
    transform (the model then imputes NaN), else a model that takes finite rows only."""
    from agents.work.artifacts import build_artifact
    from agents.work.datasets import load_builtin
    from agents.work.models import train
    from agents.work.preprocess import preprocess

    d = load_builtin(dataset)
    p = preprocess(d["X"], d["y"], task=d["task"], feature_names=d["feature_names"])
    X, y = (p["X_train"], p["y_train"]) if impute else (d["X"], d["y"])
    est = train(X, y, model="logistic_regression")
    return build_artifact(est, name=dataset, version="1", task=d["task"],
                          model="logistic_regression",
                          transform=p["transform"] if impute else None), d["X"]


def _registry_batcher(reg: object) -> MicroBatcher:
    return MicroBatcher(lambda X: list(reg.predict(X)["predictions"]),  # type: ignore[attr-defined]
                        max_batch=8, max_delay_ms=20, rule=reg.row_rule)  # type: ignore[attr-defined]


def test_the_row_width_comes_from_the_live_model_not_the_first_caller() -> None:
    from agents.work.deployment import ModelRegistry

    iris, iris_x = _artifact("iris", impute=True)  # 4 features
    wine, wine_x = _artifact("wine", impute=True)  # 13 features
    reg = ModelRegistry()
    reg.deploy(iris)

    async def main() -> None:
        async with _registry_batcher(reg) as b:
            with pytest.raises(DataError, match="the model takes 4"):
                await b.submit([1.0, 2.0])  # a wrong first row fixes nothing
            assert await b.submit(iris_x[0]) == 0
            reg.deploy(wine)  # hot swap to a model of another width
            assert await b.submit(wine_x[0]) == 0
            with pytest.raises(DataError, match="the model takes 13"):
                await b.submit(iris_x[0])

    asyncio.run(main())


def test_without_a_known_width_one_wrong_row_fails_alone() -> None:
    def predict(X: np.ndarray) -> np.ndarray:
        if X.shape[1] != 3:
            raise DataError(f"expects 3 features, got {X.shape[1]}")
        return X.sum(axis=1)

    async def main() -> list[object]:
        async with MicroBatcher(predict, max_batch=8, max_delay_ms=20) as b:
            return await asyncio.gather(b.submit([1.0, 1.0]), b.submit([1.0, 2.0, 3.0]),
                                        b.submit([2.0, 2.0, 2.0]), return_exceptions=True)

    wrong, *right = asyncio.run(main())
    assert isinstance(wrong, DataError)
    assert right == [6.0, 6.0]


def test_a_non_finite_row_is_refused_alone_at_submit() -> None:
    from agents.work.deployment import ModelRegistry

    strict, x = _artifact("iris", impute=False)  # no transform: NaN is not imputed
    imputing, _ = _artifact("iris", impute=True)
    nan_row, inf_row = x[1].copy(), x[2].copy()
    nan_row[0], inf_row[0] = np.nan, np.inf
    reg = ModelRegistry()
    reg.deploy(strict)

    async def main() -> tuple[list[object], list[object], dict]:
        async with _registry_batcher(reg) as b:
            first = await asyncio.gather(b.submit(x[0]), b.submit(nan_row), b.submit(x[3]),
                                         return_exceptions=True)
            reg.deploy(imputing)
            second = await asyncio.gather(b.submit(nan_row), b.submit(inf_row),
                                          b.submit(x[0]), return_exceptions=True)
            return first, second, b.stats()

    first, second, stats = asyncio.run(main())
    assert first[0] == 0  # the rows sharing the batch with the NaN one were served
    assert first[2] == 0
    assert isinstance(first[1], DataError)
    assert "impute" in str(first[1])
    assert second[0] == 0  # this model imputes the NaN
    assert isinstance(second[1], DataError)
    assert "infinite" in str(second[1])
    assert second[2] == 0
    assert stats["rows"] == 4  # the two refused rows never reached the model
    assert stats["refused"] == 2


def test_a_nan_row_does_not_spoil_the_batch_of_a_strict_model() -> None:
    def strict(X: np.ndarray) -> np.ndarray:  # as a model without imputation does
        if not np.isfinite(X).all():
            raise DataError("X has non-finite values")
        return X.sum(axis=1)

    async def main() -> list[object]:
        async with MicroBatcher(strict, max_batch=8, max_delay_ms=20, n_features=2) as b:
            return await asyncio.gather(b.submit([1.0, 2.0]), b.submit([np.nan, 1.0]),
                                        b.submit([3.0, 4.0]), return_exceptions=True)

    ok1, nan, ok2 = asyncio.run(main())
    assert (ok1, ok2) == (3.0, 7.0)
    assert isinstance(nan, DataError)
