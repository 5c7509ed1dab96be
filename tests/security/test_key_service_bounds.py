"""The topic key service holds keys for a bounded number of topics, and one key may begin
only so many of them: past either, a new topic is refused Overloaded and counted, while
topics that have keys are still granted. Fed in process: the service's action, a real
home (trust store, OAuth2 clients, RBAC policy) on disk."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mesh.errors import Overloaded
from security.home import enroll_identity, ensure_router, open_home
from security.key_service import TopicKeyService
from security.keys import generate
from security.topic_keys import TopicOwner


def test_new_topics_are_bounded_per_key_and_in_all(tmp_path) -> None:
    home = open_home(tmp_path / "home")
    ensure_router(home)  # the router's keys and the default policy (clients: pub/sub ">")
    alice = enroll_identity(home, "alice")
    bob = enroll_identity(home, "bob")
    service = TopicKeyService(home=home.root, endpoint="tcp://127.0.0.1:1")
    owner_keys = generate()
    service.owner = TopicOwner(owner_keys)  # what on_start makes, without a mesh to announce
    service.max_topics, service.max_new_topics_per_key = 3, 2

    def ask(who, topic: str) -> dict:
        return service.topic_key({"topic": topic, "role": "subscribe"},
                                 SimpleNamespace(reply_to=who.public))

    ask(alice, "news.a")
    ask(alice, "news.b")
    with pytest.raises(Overloaded, match="begun by this key"):
        ask(alice, "news.c")  # alice began two already
    assert ask(alice, "news.a")["generation"]  # a topic with keys: still granted
    ask(bob, "news.c")  # bob's first: the third topic in all
    with pytest.raises(Overloaded, match="3 topics have keys"):
        ask(bob, "news.d")
    assert ask(bob, "news.b")["generation"]  # existing topics: granted to bob too
    assert service.refused == {"too_many_topics": 2}
    assert sorted(service.owner.topics()) == ["news.a", "news.b", "news.c"]
