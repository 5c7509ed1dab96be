"""The mapping of a client's drop counters to metric reasons, fed plain counters."""

from __future__ import annotations

from types import SimpleNamespace

from mesh.drop_reasons import other_drops, pubsub_drops, subscription_drops


def test_publish_drops_split_by_cause_and_the_rest_met_a_full_queue() -> None:
    counters = {"publish_dropped": 10, "publish_dropped_e2e_no_key": 3,
                "publish_dropped_closed": 2, "pubsub_refused_malformed": 4}
    assert pubsub_drops(counters) == {("unsent", "no_key"): 3, ("unsent", "closed"): 2,
                                      ("unsent", "queue_full"): 5,
                                      ("unopened", "malformed"): 4}
    assert pubsub_drops({"publish_dropped": 0}) == {}


def test_counters_without_a_metric_of_their_own_are_reasons_of_one_family() -> None:
    counters = {"late_replies": 7, "sends_refused": 1, "publish_dropped": 2,
                "pubsub_refused_forbidden": 1, "malformed": 3, "send_errors": 0,
                "direct_late": 2}
    assert other_drops(counters) == {"malformed": 3, "send_errors": 0, "direct_late": 2}


def test_subscription_losses_by_topic_and_reason_summed_over_subscriptions() -> None:
    def sub(dropped: int = 0, gaps: int = 0, lost: int = 0, errors: int = 0) -> SimpleNamespace:
        return SimpleNamespace(dropped=dropped, gaps=gaps, lost=lost, callback_errors=errors)

    core = SimpleNamespace(subs=SimpleNamespace(subs={
        b"ticks.": [sub(dropped=5, gaps=1), sub(dropped=2, errors=4)],
        b"alerts": [sub()],
    }))
    assert subscription_drops(core) == {("ticks.", "queue_full"): 7,
                                        ("ticks.", "router_gap"): 1,
                                        ("ticks.", "callback_error"): 4}
    assert subscription_drops(SimpleNamespace()) == {}
