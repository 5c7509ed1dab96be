"""RBAC: patterns, deny rules, prefix subscriptions, registration, reload."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import ConfigError, Forbidden, Malformed
from security.rbac import TOPIC_END, Policy, PolicyStore, Principal, load_policy

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "rbac" / "policies.json"


def policy(roles, bindings=None):
    if bindings is None:
        bindings = [{"subject": "u", "roles": list(roles)}]
    return Policy({"version": 1, "roles": roles, "bindings": bindings})


def allow(actions, patterns, key="names"):
    return {"allow": [{"actions": actions, key: patterns}]}


def write_atomically(path: Path, doc) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)


# ---- decisions ----------------------------------------------------------------------------

def test_deny_by_default():
    p = policy({"r": allow(["request"], ["acme/ml/*"])})
    assert not p.check("u", "send", "acme/ml/x")
    assert not p.check("stranger", "request", "acme/ml/x")
    assert p.check("u", "request", "acme/ml/x")


def test_deny_beats_allow():
    p = policy({"r": {"allow": [{"actions": ["*"], "names": [">"]}],
                      "deny": [{"actions": ["request"], "names": ["acme/admin/**"]}]}})
    decision = p.check("u", "request", "acme/admin/users")
    assert not decision
    assert "denied by role 'r'" in decision.reason
    assert p.check("u", "request", "acme/ml/x")
    assert p.check("u", "send", "acme/admin/users")


def test_single_and_rest_wildcards():
    p = policy({"r": allow(["request"], ["acme/*/svc", "org/**"])})
    assert p.check("u", "request", "acme/ml/svc")
    assert not p.check("u", "request", "acme/ml/x/svc")
    assert not p.check("u", "request", "acme/svc")
    assert p.check("u", "request", "org/a")
    assert p.check("u", "request", "org/a/b/c")
    assert not p.check("u", "request", "org")  # ** / > need at least one more segment
    assert not p.check("u", "request", "organisation/a")


def test_topics_use_dots_and_gt():
    p = policy({"r": allow(["publish", "subscribe"], ["stocks.>", "alerts.*"], "topics")})
    assert p.check("u", "publish", "stocks.AAPL")
    assert p.check("u", "subscribe", "stocks.AAPL.bid")
    assert p.check("u", "subscribe", "alerts.high")
    assert not p.check("u", "subscribe", "alerts.high.x")
    assert not p.check("u", "subscribe", "stocksX.AAPL")


@pytest.mark.parametrize("name", ["", "a//b", "/a", "a/", "a/*", "a/>", "a b/c", "x" * 300,
                                  "/".join("a" * 20)])
def test_malformed_names_are_refused_as_malformed(name):
    p = policy({"r": allow(["*"], [">"])})
    decision = p.check("u", "request", name)
    assert not decision
    assert decision.malformed
    with pytest.raises(Malformed):
        p.enforce("u", "request", name)


def test_unknown_action_refused_and_enforce_raises_forbidden():
    p = policy({"r": allow(["request"], ["a/**"])})
    assert not p.check("u", "delete", "a/b")
    with pytest.raises(Forbidden):
        p.enforce("u", "send", "a/b")
    p.enforce("u", "request", "a/b")


def test_decisions_are_cached_and_cache_can_be_cleared():
    p = policy({"r": allow(["request"], ["a/**"])})
    first = p.check("u", "request", "a/b")
    assert p.check("u", "request", "a/b") is first
    p.clear_cache()
    assert p.check("u", "request", "a/b") is not first


def test_principal_combines_subject_key_and_token_roles():
    p = Policy({"version": 1, "roles": {
        "a": allow(["request"], ["x/**"]), "b": allow(["send"], ["y/**"]),
        "c": allow(["stream"], ["z/**"]), "t": allow(["register"], ["{ns}/*"])},
        "bindings": [{"subject": "svc", "roles": ["a"]}, {"key": "KEY", "roles": ["b"]}]})
    who = Principal(sub="svc", key=b"KEY", roles=("c", "t", "unknown-role"))
    assert p.check(who, "request", "x/1")
    assert p.check(who, "send", "y/1")
    assert p.check(who, "stream", "z/1")
    assert not p.check(who, "register", "x/y/z")  # a role with vars needs a binding
    assert p.check("KEY", "send", "y/1")
    assert not p.check(Principal(sub="other"), "request", "x/1")


# ---- prefix subscriptions -----------------------------------------------------------------

@pytest.fixture
def stocks():
    return policy({"r": allow(["subscribe"], ["stocks.>", "alerts.high"], "topics")})


def test_empty_prefix_refused(stocks):
    assert not stocks.check_subscribe_prefix("u", b"")


@pytest.mark.parametrize("prefix", [b"s", b"st", b"stocks", b"alerts", b"alerts.high"])
def test_partial_segment_prefix_refused(stocks, prefix):
    assert not stocks.check_subscribe_prefix("u", prefix)


@pytest.mark.parametrize("prefix", [b"stocks.", b"stocks.A", b"stocks.AAPL", b"stocks.AAPL."])
def test_prefix_inside_an_allowed_subtree_is_allowed(stocks, prefix):
    assert stocks.check_subscribe_prefix("u", prefix)


def test_exact_topic_subscription_with_terminator(stocks):
    assert stocks.check_subscribe_prefix("u", b"alerts.high" + TOPIC_END.encode())
    assert not stocks.check_subscribe_prefix("u", b"alerts.low" + TOPIC_END.encode())


def test_prefix_reaching_another_tenant_refused():
    p = Policy({"version": 1, "roles": {"t": allow(["subscribe"], ["{org}.>"], "topics")},
                "bindings": [{"subject": "acme-user", "roles": ["t"], "vars": {"org": "acme"}}]})
    assert p.check_subscribe_prefix("acme-user", "acme.")
    assert p.check_subscribe_prefix("acme-user", "acme.orders")
    for prefix in ["acme", "acm", "a", "", "acmecorp.", "globex."]:
        assert not p.check_subscribe_prefix("acme-user", prefix), prefix


def test_prefix_touching_a_denied_subtree_refused():
    p = policy({"r": {"allow": [{"actions": ["subscribe"], "topics": ["stocks.>"]}],
                      "deny": [{"actions": ["subscribe"], "topics": ["stocks.SECRET.>"]}]}})
    assert not p.check_subscribe_prefix("u", "stocks.")
    assert not p.check_subscribe_prefix("u", "stocks.S")
    assert not p.check_subscribe_prefix("u", "stocks.SECRET")
    assert p.check_subscribe_prefix("u", "stocks.A")
    assert p.check_subscribe_prefix("u", "stocks.SECRETS.")


def test_admin_may_subscribe_to_everything():
    p = policy({"admin": allow(["*"], [">"])})
    assert p.check_subscribe_prefix("u", b"")


@pytest.mark.parametrize("prefix", [b"\xff", b"a..b", b"a*", b"x" * 300])
def test_malformed_prefix_refused(stocks, prefix):
    assert stocks.check_subscribe_prefix("u", prefix).malformed


SEGS = ["a", "b", "ab", "ba"]
TOPICS = [".".join(t) for n in (1, 2, 3) for t in itertools.product(SEGS, repeat=n)]
PATTERN_SEGS = st.sampled_from(SEGS + ["*"])


@st.composite
def topic_patterns(draw):
    segs = draw(st.lists(PATTERN_SEGS, min_size=0, max_size=3))
    rest = draw(st.booleans()) or not segs
    return ".".join([*segs, ">"] if rest else segs)


@settings(max_examples=300, deadline=None, database=None)
@given(allows=st.lists(topic_patterns(), min_size=1, max_size=3),
       denies=st.lists(topic_patterns(), max_size=2),
       topic=st.sampled_from(TOPICS), cut=st.integers(0, 8))
def test_an_allowed_prefix_never_reaches_a_forbidden_topic(allows, denies, topic, cut):
    role = {"allow": [{"actions": ["subscribe"], "topics": allows}]}
    if denies:
        role["deny"] = [{"actions": ["subscribe"], "topics": denies}]
    p = policy({"r": role})
    prefix = topic[:cut]
    if p.check_subscribe_prefix("u", prefix):
        for t in TOPICS:
            if t.startswith(prefix):
                assert p.check("u", "subscribe", t), (prefix, t)


# ---- registration -------------------------------------------------------------------------

@pytest.fixture
def agents():
    return Policy({"version": 1,
                   "roles": {"agent": allow(["register"], ["{ns}/*"])},
                   "bindings": [{"subject": "ml", "roles": ["agent"], "vars": {"ns": "acme/ml"}}]})


def test_register_inside_own_namespace(agents):
    assert agents.check_register("ml", "acme/ml/trainer")
    assert agents.check_register("ml", "acme/ml/trainer/instance-3")


@pytest.mark.parametrize("name", ["acme/finance/trainer", "acme/mlx/trainer", "globex/ml/x",
                                  "acme/ml/trainer/../../finance"])
def test_register_outside_own_namespace_refused(agents, name):
    assert not agents.check_register("ml", name)


@pytest.mark.parametrize("name", ["acme/ml", "acme", "acme/ml/a/b/c", "acme/ml/*", "",
                                  "acme/ml/..", "acme/ml/./x"])
def test_register_needs_a_full_service_name(agents, name):
    decision = agents.check_register("ml", name)
    assert not decision
    assert decision.malformed


# ---- the policy file ----------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "message"), [
    ({"version": 2, "roles": {}}, "version"),
    ({"version": 1, "roles": {"r": {"alow": []}}}, "unknown member"),
    ({"version": 1, "roles": {"r": allow(["delete"], ["a/**"])}}, "unknown action"),
    ({"version": 1, "roles": {"r": allow(["request"], ["sto*cks/**"])}}, "bad segment"),
    ({"version": 1, "roles": {"r": allow(["request"], ["a/**/b"])}}, "may only end"),
    ({"version": 1, "roles": {"r": allow(["subscribe"], ["acme/**"], "topics")}},
     "bad segment"),
    ({"version": 1, "roles": {"r": {"allow": [{"actions": ["request"], "names": ["a/**"],
                                                "topics": ["a.>"]}]}}}, "exactly one"),
    ({"version": 1, "roles": {}, "bindings": [{"subject": "u", "roles": ["ghost"]}]},
     "unknown role"),
    ({"version": 1, "roles": {"r": allow(["request"], ["{ns}/*"])},
      "bindings": [{"subject": "u", "roles": ["r"]}]}, "needs var"),
    ({"version": 1, "roles": {"r": allow(["request"], ["{ns}/*"])},
      "bindings": [{"subject": "u", "roles": ["r"], "vars": {"ns": "*"}}]}, "wildcard-free"),
    ({"version": 1, "roles": {}, "bindings": [{"subject": "u", "key": "k", "roles": []}]},
     "exactly one"),
])
def test_invalid_policies_are_config_errors(doc, message):
    with pytest.raises(ConfigError, match=message):
        Policy(doc)


def test_duplicate_members_and_bad_json_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"version": 1, "roles": {}, "roles": {"x": {}}}')
    with pytest.raises(ConfigError, match="duplicate"):
        load_policy(path)
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_policy(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "missing.json")


def test_policy_reload_without_restart(tmp_path):
    path = tmp_path / "policies.json"
    write_atomically(path, {"version": 1, "roles": {"r": allow(["request"], ["a/**"])},
                            "bindings": [{"subject": "u", "roles": ["r"]}]})
    store = PolicyStore(path)
    assert store.check("u", "request", "a/b")
    assert not store.check("u", "request", "b/c")
    assert store.maybe_reload() is False  # unchanged
    write_atomically(path, {"version": 1, "roles": {"r": allow(["request"], ["b/**"])},
                            "bindings": [{"subject": "u", "roles": ["r"]}]})
    assert store.maybe_reload() is True
    assert store.check("u", "request", "b/c")
    assert not store.check("u", "request", "a/b")  # the old cached decision is gone


def test_invalid_policy_file_keeps_the_old_policy(tmp_path):
    path = tmp_path / "policies.json"
    write_atomically(path, {"version": 1, "roles": {"r": allow(["request"], ["a/**"])},
                            "bindings": [{"subject": "u", "roles": ["r"]}]})
    store = PolicyStore(path)
    old = store.policy
    write_atomically(path, '{"version": 1, "roles": {"r": {"allow": [{"actions": ["fly"]}]}}}')
    assert store.maybe_reload() is False
    assert store.policy is old
    assert isinstance(store.last_error, ConfigError)
    assert store.check("u", "request", "a/b")
    write_atomically(path, {"version": 1, "roles": {"r": allow(["request"], ["c/**"])},
                            "bindings": [{"subject": "u", "roles": ["r"]}]})
    assert store.maybe_reload() is True
    assert store.last_error is None
    assert store.check("u", "request", "c/d")


def test_invalid_policy_at_start_is_fatal(tmp_path):
    path = tmp_path / "policies.json"
    path.write_text("[]")
    with pytest.raises(ConfigError):
        PolicyStore(path)


def test_shipped_policy_file():
    p = load_policy(SHIPPED)
    assert p.check("admin", "admin", "mesh/router")
    assert p.check_register("ml_trainer", "acme/ml/ml_trainer")
    assert not p.check_register("ml_trainer", "acme/analytics/ml_trainer")
    assert p.check("analyst", "request", "acme/ml/ml_trainer")
    assert not p.check("analyst", "request", "acme/admin/users")
    assert not p.check("analyst", "register", "acme/ml/x")
    assert p.check_subscribe_prefix("analyst", b"stocks.")
    assert p.check_subscribe_prefix("analyst", b"alerts.")
    assert not p.check_subscribe_prefix("analyst", b"")
    assert not p.check_subscribe_prefix("analyst", b"st")
    assert not p.check("analyst", "publish", "stocks.AAPL")
    assert p.check("stock_api", "publish", "stocks.AAPL")
    assert not p.check("globex-client", "request", "acme/ml/ml_trainer")
    assert not p.check_subscribe_prefix("globex-client", b"acme.")
    assert p.check_subscribe_prefix("globex-client", b"globex.")
    assert not p.check("nobody", "request", "acme/ml/ml_trainer")
