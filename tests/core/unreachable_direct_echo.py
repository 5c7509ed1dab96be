"""An echo agent that offers direct streams on an endpoint nobody can reach (its socket is
closed right after start): clients must fall back to the router path."""

from __future__ import annotations

from agents.echo import Echo


class UnreachableDirectEcho(Echo):
    async def on_start(self) -> None:
        if self.direct is not None:
            self.direct.close()  # the offers still name its endpoint: connecting never works


if __name__ == "__main__":
    UnreachableDirectEcho.main()
