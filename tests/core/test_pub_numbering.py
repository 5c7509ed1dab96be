"""The subscriber's pub/sub numbering (mesh/pub_numbering.py), fed plain numbers: router gaps,
messages lost where the router could not count them, gaps a publisher's skip shows again,
a prefix forgotten, and every table bounded."""

from __future__ import annotations

from mesh.pub_numbering import STAMP, PubNumbering

P, Q = b"p" * 8, b"q" * 8


def stamp(publisher: bytes, first: int) -> bytes:
    return STAMP.pack(publisher, first)


def test_numbers_in_order_show_nothing_missed() -> None:
    n = PubNumbering()
    assert n.published(b"t", 1, 3, stamp(P, 1)) == (0, 0)
    assert n.published(b"t", 4, 1, stamp(P, 4)) == (0, 0)
    assert n.beacon(b"t", 4) == 0  # the latest is the one heard
    assert n.expected == {b"t": 5}
    assert n.pub_next == {(b"t", P): 5}


def test_a_router_skip_is_a_gap_and_the_publishers_same_skip_is_not_lost() -> None:
    n = PubNumbering()
    n.published(b"t", 1, 1, stamp(P, 1))
    assert n.published(b"t", 4, 1, stamp(P, 4)) == (2, 0)  # the router dropped 2 and 3
    assert n.explained == {}  # shown by the publisher's numbering too: nothing left
    # the router counted 2 more (its beacon) that the publisher shows later: not lost
    assert n.beacon(b"t", 6) == 2
    assert n.explained == {b"t": [[2, 2, 1]]}  # (serial 2: 2 messages, 1 publisher to show)
    assert n.published(b"t", 7, 1, stamp(P, 7)) == (0, 0)
    assert n.explained == {}


def test_a_publisher_skip_no_router_gap_explains_is_lost() -> None:
    n = PubNumbering()
    n.published(b"t", 1, 2, stamp(P, 1))
    # a restarted router numbers afresh; the publisher's numbers skipped 3..5
    n.restart()
    assert n.published(b"t", 1, 1, stamp(P, 6)) == (0, 3)
    assert n.pub_next[(b"t", P)] == 7
    n.explain(b"t", 1)  # one of the next skip the router counted itself
    assert n.published(b"t", 2, 1, stamp(P, 9)) == (0, 1)
    assert n.explained == {}
    # another publisher's numbering is its own; an unstamped batch leaves them alone
    assert n.published(b"t", 3, 1, stamp(Q, 40)) == (0, 0)
    assert n.published(b"t", 4, 1, b"") == (0, 0)
    assert n.pub_next == {(b"t", P): 10, (b"t", Q): 41}


def test_a_suback_starts_numbering_only_where_none_is_kept() -> None:
    n = PubNumbering()
    assert n.beacon(b"t", 5) == 0  # a topic not followed here: nothing to miss
    n.confirmed(b"t", 5)
    n.confirmed(b"t", 9)  # a second subscription's: the numbering kept goes on
    assert n.published(b"t", 6, 1, b"") == (0, 0)


def test_a_prefix_forgotten_keeps_what_another_prefix_heard() -> None:
    n = PubNumbering()
    for topic in (b"a.x", b"a.k.y", b"b.z"):
        n.published(topic, 1, 1, stamp(P, 1))
        n.explain(topic, 1)
    n.forget(b"a.", (b"a.k.", b"b."))
    assert set(n.expected) == set(n.explained) == {b"a.k.y", b"b.z"}
    assert set(n.pub_next) == {(b"a.k.y", P), (b"b.z", P)}
    # what was forgotten starts again unseen: no gap, nothing lost
    assert n.published(b"a.x", 50, 1, stamp(P, 50)) == (0, 0)
    n.forget(b"", ())  # nothing heard: all forgotten
    assert (n.expected, n.explained, n.pub_next) == ({}, {}, {})


def test_every_table_is_bounded_and_restarts_unseen() -> None:
    n = PubNumbering(max_tracked=8)
    for i in range(50):
        topic = f"job.{i}".encode()
        assert n.published(topic, 1, 1, stamp(P, 1)) == (0, 0)
        n.explain(topic, 1)
        assert len(n.expected) <= 8
        assert len(n.pub_next) <= 8
        assert len(n.explained) <= 8
    # a topic whose numbering was dropped restarts where it is: no false gap or loss
    assert n.published(b"job.0", 9, 1, stamp(P, 9)) == (0, 0)
    # a topic still kept is still checked: 3 router gaps (and the 1 counted before) cover
    # 4 of the publisher's 7 skipped numbers
    assert n.published(b"job.49", 5, 1, stamp(P, 9)) == (3, 3)
