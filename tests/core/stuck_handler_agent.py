"""An echo agent with a threaded handler that ignores its cancellation (as a long fit
might): a SIGTERM must still end the process once the drain's time runs out."""

from __future__ import annotations

import threading
from typing import Any

from agents.context import Context, action
from agents.echo import Echo


class StuckEcho(Echo):
    @action()
    def stuck(self, data: Any, ctx: Context) -> Any:
        threading.Event().wait(60)  # never looks at ctx.cancelled; bounded by this wait
        return "late"


if __name__ == "__main__":
    StuckEcho.main()
