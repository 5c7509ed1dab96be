"""A test agent that subscribes, through its own ``Agent.mesh``, to a topic e2e clients seal,
and says what it heard (run as a process by test_topic_agent_e2e.py)."""

from __future__ import annotations

from typing import Any

from agents.base import Agent, Context, action
from mesh.pubsub import Message


class SealedListener(Agent):
    name = "listener"
    namespace = "test/listen"

    async def on_start(self) -> None:
        self.heard_items: list[Any] = []
        self.sub = await self.mesh.subscribe("news.world", self._on_message)

    def _on_message(self, msg: Message) -> None:
        self.heard_items.append(msg.data)

    @action(inline=True)
    def heard(self, data: Any, ctx: Context) -> Any:
        return {"items": list(self.heard_items), "refused": dict(self.sub.refused)}


if __name__ == "__main__":
    SealedListener.main()
