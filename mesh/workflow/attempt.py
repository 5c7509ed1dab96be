"""One attempt's call of a step: under the step's timeout, in its span, ending in a result
or in the failure that says why.

Apart from the run's driver (:mod:`mesh.workflow.execution`), which records what the attempt
came to: this part only tells the step's own deadline, a cancel and the call's own error
apart, and writes nothing to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mesh import telemetry
from mesh.errors import Cancelled, DeadlineExceeded
from mesh.workflow.model import StepSpec
from mesh.workflow.steps import STEP_TIMED_OUT, CallStep, StepResult


async def call_attempt(call_step: CallStep, run_id: str, step: StepSpec,
                       inputs: dict[str, Any], attempt: int, avoid: set[str],
                       timeout: float | None) -> StepResult | BaseException:
    """Call ``step`` once; return its result, or the failure (DeadlineExceeded past
    ``timeout``, Cancelled when the call cancelled itself, else the call's own error).
    Cancelling this coroutine (the run halts) cancels the call and waits for it."""
    # A task plus asyncio.wait, not wait_for: a TimeoutError raised by call_step itself
    # must stay distinguishable from this step's own deadline.
    span = (telemetry.step_span(run_id, step.name, step.agent, attempt)
            if telemetry.ENABLED else contextlib.nullcontext())
    with span as current:  # the call's task copies the context: its requests carry
        call = asyncio.ensure_future(  # this step's span
            call_step(step, inputs, attempt, avoid))
        timed_out = False  # stays False when this attempt itself is cancelled (halt)
        try:
            done, _ = await asyncio.wait({call}, timeout=timeout)
            timed_out = call not in done
        finally:
            if not call.done():  # the call hears why: its destination's breaker counts it
                call.cancel(STEP_TIMED_OUT if timed_out else None)
                await asyncio.gather(call, return_exceptions=True)
        failure: BaseException
        if timed_out:
            failure = DeadlineExceeded(
                f"step {step.name!r} exceeded its {timeout:g} s timeout")
        elif call.cancelled():
            failure = Cancelled(f"step {step.name!r} was cancelled by its own call")
        else:
            exc = call.exception()
            if exc is None:
                result = call.result()
                return result if isinstance(result, StepResult) else StepResult(output=result)
            failure = exc
        # asyncio.wait raised nothing: the span would end OK unless told otherwise
        mark_failed(current, failure)
    return failure


def mark_failed(span: Any, exc: BaseException) -> None:
    """Give a span that will end without an exception the ERROR status of ``exc`` (as
    :mod:`mesh.telemetry` does for one that ends with it); no-op without a span."""
    if span is None or not span.is_recording():
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
    code = getattr(exc, "code", None)
    if code is not None:
        span.set_attribute("agp.error_code", getattr(code, "name", str(code)))
