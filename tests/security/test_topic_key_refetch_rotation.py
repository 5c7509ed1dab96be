"""A rotation notice that reaches a publisher while its key for the topic is on the way (its
lease re-fetch, or its first fetch of that topic) must not be undone by the reply: the key
service may have answered before it rotated, and a publisher that kept that key would seal
under the generation the removed reader still holds until its next lease re-fetch (~48 s).

The reply is the key service's real answer; the test only holds it on the publisher's loop
until the notice has been taken there, which is the order a reply overtaken on the wire by
the notice arrives in."""

from __future__ import annotations

from typing import Any

import pytest

from mesh import Forbidden
from security.key_service import NOTICE_TOPIC
from tests.helpers import until, wait_for
from tests.security.conftest import DEADLINE

TOPIC = "news.world"
OTHER = "news.local"  # a topic of the publisher's own that no reader leaves


def crypto(m: Any) -> Any:
    return m._amesh.core.subs.crypto


class HeldReply:
    """Wraps the publisher's own request: its next ``topic_key`` publish reply for
    ``topic`` is handed on only once the client has seen a notice more than before."""

    def __init__(self, client: Any, topic: str) -> None:
        self.client, self.topic, self.real = client, topic, client.amesh.request
        self.armed = False
        self.notices_before = 0
        self.generation: int | None = None  # what the held reply carries

    async def request(self, dest: str, action: str, data: Any = None, **kwargs: Any) -> Any:
        reply = await self.real(dest, action, data, **kwargs)
        if self.armed and action == "topic_key" and data == {"topic": self.topic,
                                                             "role": "publish"}:
            self.armed = False
            self.generation = reply["generation"]
            await until(lambda: self.client.notices_seen > self.notices_before,
                        timeout=DEADLINE, what="the rotation notice reached the publisher")
        return reply


def drain(sub: Any, into: list[Any]) -> None:
    """Take what a subscription delivers until it raises (a refused key, or nothing more)."""
    while True:
        into.append(sub.get(timeout=5).data)


def drop_bob(doc: dict[str, Any]) -> None:  # bob keeps calling the system services only
    for b in doc["bindings"]:
        if b.get("subject") == "bob":
            b["roles"] = ["caller"]


@pytest.mark.parametrize("fetch", ["lease", "first"])
def test_a_notice_during_a_fetch_is_not_undone_by_its_reply(
        topic_mesh: Any, monkeypatch: pytest.MonkeyPatch, fetch: str) -> None:
    pub, alice, bob = (topic_mesh.connect(n) for n in ("pub", "alice", "bob"))
    notices = topic_mesh.connect("tester", e2e=False).subscribe(NOTICE_TOPIC)
    subs = {"alice": alice.subscribe(TOPIC), "bob": bob.subscribe(TOPIC)}
    client = crypto(pub)
    if fetch == "lease":  # the publisher holds the topic's key; its lease runs out below
        pub.publish(TOPIC, "first")
        pub.flush(wait=True)
        for s in subs.values():
            assert s.get(timeout=10).data == "first"
    else:  # the publisher has a key (so it takes notices), not yet this topic's
        pub.publish(OTHER, "warm-up")
        pub.flush(wait=True)
    wait_for(lambda: client._notices is not None and client._notices.done(),
             timeout=DEADLINE, message="the publisher subscribed to the notices")
    old = crypto(alice).member.generation(TOPIC)
    assert old is not None

    held = HeldReply(client, TOPIC)
    monkeypatch.setattr(client.amesh, "request", held.request)
    held.notices_before = client.notices_seen
    held.armed = True
    if fetch == "lease":
        client._refresh_at[TOPIC] = 0.0  # due now: the next batch fetches again
    pub.publish(TOPIC, "during")
    pub.flush()
    wait_for(lambda: held.generation is not None, timeout=DEADLINE,
             message="the key service answered the publisher's fetch")
    assert held.generation == old  # answered before the rotation

    topic_mesh.edit_policy(drop_bob)
    notice = notices.get(timeout=DEADLINE).data
    while notice.get("topic") != TOPIC:
        notice = notices.get(timeout=DEADLINE).data
    new = notice["generation"]
    assert new != old
    wait_for(lambda: client.member.generation(TOPIC) == new, timeout=DEADLINE,
             message="the publisher sealing under the generation the notice announced")
    assert pub._amesh.core.counters.get("e2e_key_refetched_after_notice", 0) == 1

    for i in range(10):
        pub.publish(TOPIC, f"after{i}")
    pub.flush(wait=True)
    assert [subs["alice"].get(timeout=10).data for _ in range(11)] == \
        ["during", *(f"after{i}" for i in range(10))]
    # bob opens none of what was sealed after the rotation (counted, then raised); in the
    # lease case "during" went out under the old key before the rotation: his to read
    wait_for(lambda: subs["bob"].refused.get("forbidden", 0) >= 10, timeout=DEADLINE,
             message="bob's refusals counted")
    got: list[Any] = []
    with pytest.raises(Forbidden):
        drain(subs["bob"], got)
    assert got == (["during"] if fetch == "lease" else [])
