"""An agent process with AGP_E2E=1 opens sealed topics through its own ``Agent.mesh``, as
an e2e client does: it fetches the topic key under its own identity's rights."""

from __future__ import annotations

from agents.procs import agent_process
from tests.helpers import wait_for

TOPIC = "news.world"


def test_an_e2e_agent_opens_a_sealed_topic(topic_mesh, spawn, enroll) -> None:
    enroll("listener", "test/listen")
    topic_mesh.edit_policy(lambda doc: doc["bindings"].append(
        {"subject": "listener", "roles": ["caller", "reader"]}))
    spawn(agent_process("tests.security.sealed_listener", topic_mesh.endpoint,
                        name="listener", extra=["--identity", "listener"],
                        env={"AGP_E2E": "1"}))
    pub = topic_mesh.connect("pub")
    admin = topic_mesh.connect("tester", e2e=False)  # asks the agent what it heard
    topic_mesh.captured.clear()

    def heard() -> list:
        pub.publish(TOPIC, "sealed for readers")
        pub.flush(wait=True)
        return admin.request("test/listen/listener", "heard")["items"]

    wait_for(heard, timeout=15, interval=0.2, message="the agent opened a sealed message")
    assert b"sealed for readers" not in b"".join(topic_mesh.captured)  # sealed on the way
    assert admin.request("test/listen/listener", "heard")["refused"] == {}
