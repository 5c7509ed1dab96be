"""Router-counted gaps are explained only to the publishers that could show them
(mesh/pub_numbering.py): a gap no publisher ever shows (its publisher stopped, or was new
and unseen) must not absorb a later real loss of another publisher, and a share every
candidate showed is never counted as lost too."""

from __future__ import annotations

from mesh.pub_numbering import MAX_SHARES, STAMP, PubNumbering

A, B, C, Y = b"a" * 8, b"b" * 8, b"c" * 8, b"y" * 8


def stamp(publisher: bytes, first: int) -> bytes:
    return STAMP.pack(publisher, first)


def unshown(n: PubNumbering, topic: bytes) -> int:
    return sum(share[1] for share in n.explained.get(topic, ()))


def test_a_stopped_publishers_gap_does_not_absorb_another_publishers_loss() -> None:
    n = PubNumbering()
    assert n.published(b"t", 1, 1, stamp(A, 1)) == (0, 0)
    assert n.published(b"t", 2, 1, stamp(B, 1)) == (0, 0)
    # the router dropped A's 2..4 for us (router 3..5); A never publishes again
    assert n.published(b"t", 6, 1, stamp(B, 2)) == (3, 0)  # B in order: none of B's
    # a killed router took B's 3 and 4 with it; the restarted one numbers afresh
    n.restart()
    assert n.published(b"t", 1, 1, stamp(B, 5)) == (0, 2)
    # the same through a beacon, B quiet meanwhile
    assert n.beacon(b"t", 4) == 3
    assert n.published(b"t", 5, 1, stamp(B, 6)) == (0, 0)
    n.restart()
    assert n.published(b"t", 1, 1, stamp(B, 9)) == (0, 2)


def test_shares_every_publisher_shows_count_nothing_lost_and_a_stale_one_nothing() -> None:
    n = PubNumbering()
    for seq, who in enumerate((A, B, C), start=1):
        n.published(b"t", seq, 1, stamp(who, 1))
    # router 4..7 dropped: A's 2 and 3, B's 2, C's 2 (C stops)
    assert n.beacon(b"t", 7) == 4
    assert n.published(b"t", 8, 1, stamp(A, 4)) == (0, 0)
    assert n.published(b"t", 9, 1, stamp(B, 3)) == (0, 0)  # gaps 4, lost 0: nothing twice
    n.restart()  # a killed router took B's 4..6
    assert n.published(b"t", 1, 1, stamp(B, 7)) == (0, 3)
    assert unshown(n, b"t") == 1  # C's, that only C may show
    assert n.published(b"t", 2, 1, stamp(C, 3)) == (0, 0)  # C back: its share shown
    assert n.explained == {}


def test_a_publisher_new_since_a_gap_is_not_charged_against_it() -> None:
    n = PubNumbering()
    n.published(b"t", 1, 1, stamp(A, 1))
    assert n.beacon(b"t", 3) == 2  # A's 2 and 3
    assert n.published(b"t", 4, 1, stamp(Y, 1)) == (0, 0)  # Y's first: numbering starts
    n.restart()  # a killed router took Y's 2 and 3
    assert n.published(b"t", 1, 1, stamp(Y, 4)) == (0, 2)
    assert n.published(b"t", 2, 1, stamp(A, 4)) == (0, 0)  # A's share still explained


def test_a_publisher_silent_across_several_gaps_shows_them_all() -> None:
    n = PubNumbering()
    n.published(b"t", 1, 1, stamp(A, 1))
    n.published(b"t", 2, 1, stamp(B, 1))
    assert n.beacon(b"t", 4) == 2  # A's 2, 3
    assert n.published(b"t", 5, 1, stamp(B, 2)) == (0, 0)
    assert n.beacon(b"t", 8) == 3  # A's 4..6
    assert n.published(b"t", 9, 1, stamp(B, 3)) == (0, 0)
    n.restart()  # a killed router took B's 4 and A's 7, 8
    assert n.published(b"t", 1, 1, stamp(B, 5)) == (0, 1)
    assert n.published(b"t", 2, 1, stamp(A, 9)) == (0, 2)
    assert n.explained == {}


def test_shares_waiting_on_a_stopped_publisher_are_bounded_and_still_explain() -> None:
    n = PubNumbering()
    n.published(b"t", 1, 1, stamp(A, 1))
    n.published(b"t", 2, 1, stamp(B, 1))
    seq = 3
    for i in range(3 * MAX_SHARES):  # A's message dropped before each of B's
        assert n.published(b"t", seq + 1, 1, stamp(B, 2 + i)) == (1, 0)
        seq += 2
    n.restart()  # a killed router took B's next: counted, no share being B's
    assert n.published(b"t", 1, 1, stamp(B, 3 + 3 * MAX_SHARES)) == (0, 1)
    assert len(n.explained[b"t"]) == MAX_SHARES  # the oldest merged, all still A's
    seq = 2
    # A shows every one of them: nothing counted twice
    assert n.published(b"t", seq, 1, stamp(A, 2 + 3 * MAX_SHARES)) == (0, 0)
    assert n.explained == {}
    # no publisher known to show a gap: nothing is kept for it
    n.beacon(b"t", seq + 5)
    n.published(b"u", 1, 1, b"")
    n.beacon(b"u", 9)
    assert set(n.explained) == {b"t"}
