"""The router's loop waits for its next housekeeping tick by polling with a timeout in
whole milliseconds: the timeout is rounded up, so the last fraction of a millisecond before
a tick is a wait, not a busy loop of ``poll(0)`` stealing a core from the peers' threads."""

from __future__ import annotations

from router.server import poll_timeout_ms

NOW = 1000.0


def test_a_tick_less_than_a_millisecond_away_is_waited_for_not_spun_on() -> None:
    assert poll_timeout_ms(NOW + 0.0004, NOW) == 1
    assert poll_timeout_ms(NOW + 0.0000001, NOW) == 1


def test_whole_milliseconds_and_a_tick_due_or_past() -> None:
    assert poll_timeout_ms(NOW + 0.0995, NOW) == 100
    assert poll_timeout_ms(NOW + 0.002, NOW) in (2, 3)  # float: never less than the wait
    assert poll_timeout_ms(NOW, NOW) == 0
    assert poll_timeout_ms(NOW - 0.5, NOW) == 0
