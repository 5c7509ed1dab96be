"""The workflow runner's ``call_step`` over the mesh: one request per attempt, instance-aware.

A step requests ``step.agent`` / ``step.action`` with ``{"params", "inputs", "run", "step"}``,
under the step's timeout, with the idempotency key ``<run>/<step>`` (an agent that already
answered that key answers again from its cache instead of redoing the work). The instance
that served or failed a step is learnt from the reply's address frame and from progress
reports; a failure names it in ``details["instance"]`` so the runner's retry asks the router
for the service's instances and addresses one it has not tried (:meth:`destination`).
A step the runner stops because its timeout expired counts as a failure of the destination
for its circuit breaker (the runner's timer fires before the request's own deadline would).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from mesh import codec
from mesh.aio import AsyncMesh
from mesh.errors import ConfigError, DeadlineExceeded, Error
from mesh.replies import decode_reply
from mesh.wire import MAX_ADDRESS_BYTES, Cmd
from mesh.workflow import CURRENT_RUN, StepResult, StepSpec, cancelled_by_timeout
from proto import agp_pb2

DEFAULT_STEP_TIMEOUT: Final = 600.0
MAX_TRACKED_RUNS: Final = 100
ProgressHook = Callable[[str, str, str, float, str], None]
"""``(run_id, step, instance, fraction, message)`` for each progress report of a step."""


class MeshStepCaller:
    """``call_step`` over an AsyncMesh: one request per attempt, instance-aware."""

    def __init__(self, mesh: AsyncMesh, *, on_progress: ProgressHook | None = None,
                 default_timeout: float = DEFAULT_STEP_TIMEOUT) -> None:
        self.mesh = mesh
        self.on_progress = on_progress
        self.default_timeout = default_timeout
        self.progress: dict[str, dict[str, dict[str, Any]]] = {}
        self.destinations: set[str] = set()

    async def __call__(self, step: StepSpec, inputs: dict[str, Any], attempt: int,
                       avoid: set[str]) -> StepResult:
        run_id = CURRENT_RUN.get("")
        dest = await self.destination(step.agent, avoid)
        payload = {"params": dict(step.params), "inputs": inputs, "run": run_id,
                   "step": step.name, "attempt": attempt}
        timeout = step.timeout or self.default_timeout
        value, instance = await self.request(dest, step.action, payload, f"{run_id}/{step.name}",
                                             timeout, lambda inst, f, m: self._progress(
                                                 run_id, step.name, inst, f, m))
        return StepResult(output=value, instance=instance)

    def _progress(self, run_id: str, step: str, instance: str, fraction: float,
                  message: str) -> None:
        if run_id not in self.progress and len(self.progress) >= MAX_TRACKED_RUNS:
            self.progress.pop(next(iter(self.progress)))
        runs = self.progress.setdefault(run_id, {})
        runs[step] = {"instance": instance, "fraction": fraction, "message": message}
        if self.on_progress is not None:
            self.on_progress(run_id, step, instance, fraction, message)

    async def destination(self, agent: str, avoid: set[str]) -> str:
        """The service name, or, when some instances failed this step already, the least
        loaded instance of the service that has not (the router balances blind to that)."""
        if not avoid:
            return agent
        try:
            services = await self.mesh.request("agp/router", "services", timeout=2.0)
        except Error:
            return agent
        matches = [s for s in services if s["service"] == agent
                   or s["service"].endswith("/" + agent)]
        if len(matches) != 1:
            return agent  # unknown or ambiguous: let the router say so
        free = [i for i in matches[0]["instances"] if i["accepting"] and i["name"] not in avoid]
        if not free:
            return agent
        # one with no free slot last (READY may offer 0: its threads past their deadline;
        # with nothing in flight it looked the least loaded, and the router refuses a call
        # addressed to it at once)
        best = min(free, key=lambda i: (i["inflight"] >= i["capacity"],
                                        i["inflight"] / max(1, i["capacity"]), i["name"]))
        return str(best["name"])

    async def request(self, dest: str, action_name: str, payload: Any, key: str,
                      timeout: float, on_progress: Callable[[str, float, str], None]
                      ) -> tuple[Any, str | None]:
        """One request; returns (reply, instance that sent it). A failure gains
        ``details["instance"]`` when the instance is known (from its progress reports)."""
        address = dest.encode()
        if not address or len(address) > MAX_ADDRESS_BYTES:
            raise ConfigError(f"bad destination {dest!r}")
        self.destinations.add(dest)
        header = agp_pb2.Envelope(action=action_name, idempotency_key=key).SerializeToString()
        body = codec.encode(payload)  # TooLarge, say: before a trial slot is taken
        breaker = self.mesh.breaker(dest)
        # CircuitOpen: the attempt fails at once, retried later; the ticket goes back with
        # the outcome, within ``timeout`` (only a half-open breaker's trial decides it)
        ticket = 0 if breaker is None else breaker.before_call(timeout)
        seen: list[str] = []

        def progress(instance: bytes, msg: list[bytes]) -> None:
            name = instance.decode(errors="replace")
            if name and (not seen or seen[-1] != name):
                seen.append(name)
            report = codec.decode(msg[3:]) if len(msg) > 3 else {}
            on_progress(name, float(report.get("fraction", 0.0)), str(report.get("message", "")))

        core = self.mesh.core
        waiter = asyncio.get_running_loop().create_future()
        try:
            ident = core.start_request(Cmd.REQUEST, address, header, body, waiter,
                                       timeout=timeout, on_progress=progress)
        except BaseException:  # never sent (the mesh closed, say): no outcome to record
            if breaker is not None:
                breaker.abandon(ticket)
            raise
        try:
            msg = await waiter
        except asyncio.CancelledError as exc:
            core.cancel_request(ident)  # the agent is told to stop (its ctx.progress raises)
            if breaker is not None:
                if cancelled_by_timeout(exc):  # the step's deadline passed: not answering
                    breaker.record(DeadlineExceeded(f"{dest} did not answer in {timeout:g} s"),
                                   ticket)
                else:  # a person or the run stopped it: says nothing about the destination
                    breaker.abandon(ticket)
            raise
        except Error as exc:
            if breaker is not None:
                # The breaker tracks reachability: an agent's own error (a poison input)
                # proves the destination is up, and must not leave a half-open trial stuck.
                breaker.record(exc, ticket)
            if seen:
                exc.details.setdefault("instance", seen[-1])
            raise
        if breaker is not None:
            breaker.on_success(ticket)
        return decode_reply(msg), (msg[1].decode(errors="replace") or None)

    def breaker_states(self) -> dict[str, str]:
        """Circuit-breaker state of every destination called so far."""
        out = {}
        for dest in sorted(self.destinations):
            b = self.mesh.breaker(dest)
            if b is not None:
                out[dest] = b.state.value
        return out
