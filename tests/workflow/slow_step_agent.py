"""An agent whose ``hang`` action answers only after ``params.seconds`` (30 by default) or
when its caller cancels: a destination that is up but never answers in time (run as a
process by the step-caller tests, not collected by pytest)."""

from __future__ import annotations

from typing import Any

from agents.context import Context, action
from agents.echo import Echo


class SlowStep(Echo):
    name = "slow_step"

    @action()
    def hang(self, data: Any, ctx: Context) -> Any:
        seconds = float(data.get("params", {}).get("seconds", 30.0))
        ctx.progress(0.0, "hanging")  # the caller knows the call has reached this agent
        ctx.wait_cancelled(seconds)  # bounded; returns at once when the caller cancels
        return {"instance": self.instance_name}


if __name__ == "__main__":
    SlowStep.main()
