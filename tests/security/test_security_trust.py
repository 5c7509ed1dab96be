"""Trust store: enroll, revoke for good, reload on change."""

from __future__ import annotations

import json
import shutil

import pytest
import zmq.auth

from mesh.errors import ConfigError
from security import keys
from security.trust import RevokedKey, TrustStore, UnknownKey


@pytest.fixture
def store(tmp_path):
    return TrustStore(tmp_path / "trust")


def test_enroll_then_trusted_in_every_key_form(store):
    pair = keys.generate()
    assert not store.is_trusted(pair.public)
    assert store.enroll("alice", pair.public) == pair.public
    assert store.is_trusted(pair.public)
    assert store.is_trusted(pair.public_raw)
    assert store.is_trusted(pair.public.decode())
    assert store.name_of(pair.public_raw) == "alice"
    assert [(t.name, t.public) for t in store.list()] == [("alice", pair.public)]


def test_enroll_is_idempotent_but_refuses_conflicts(store):
    a, b = keys.generate(), keys.generate()
    store.enroll("alice", a.public)
    store.enroll("alice", a.public)
    with pytest.raises(ConfigError, match="another key"):
        store.enroll("alice", b.public)
    with pytest.raises(ConfigError, match="already enrolled"):
        store.enroll("alias", a.public)
    with pytest.raises(ConfigError):
        store.enroll("../x", b.public)
    assert [t.name for t in store.list()] == ["alice"]


def test_revoked_key_is_refused_and_cannot_be_enrolled_again(store):
    pair = keys.generate()
    store.enroll("bob", pair.public)
    store.revoke("bob", reason="laptop stolen")
    assert not store.is_trusted(pair.public)
    assert store.is_revoked(pair.public)
    assert store.list() == []
    assert [(r.public, r.name, r.reason) for r in store.revoked()] == [
        (pair.public, "bob", "laptop stolen")]
    with pytest.raises(RevokedKey):
        store.enroll("bob", pair.public)
    with pytest.raises(RevokedKey):
        store.enroll("bob2", pair.public)


def test_revoked_certificate_copied_back_stays_refused(store, tmp_path):
    pair = keys.generate()
    store.enroll("carol", pair.public)
    saved = tmp_path / "carol.key"
    shutil.copy(store.directory / "trusted" / "carol.key", saved)
    store.revoke(pair.public)
    shutil.copy(saved, store.directory / "trusted" / "carol.key")
    store.refresh()
    assert not store.is_trusted(pair.public)


def test_revoke_unknown_key_is_preemptive_and_unknown_name_errors(store):
    pair = keys.generate()
    store.revoke(pair.public_raw)
    assert store.is_revoked(pair.public)
    with pytest.raises(RevokedKey):
        store.enroll("dave", pair.public)
    with pytest.raises(UnknownKey):
        store.revoke("no-such-name")


def test_refresh_sees_changes_made_by_another_process_and_reports_lost_keys(store):
    other = TrustStore(store.directory)  # e.g. the CLI while the router runs
    a, b = keys.generate(), keys.generate()
    other.enroll("a", a.public)
    other.enroll("b", b.public)
    assert not store.is_trusted(a.public)
    assert store.refresh() == frozenset()  # nothing lost
    assert store.is_trusted(a.public)
    assert store.is_trusted(b.public)
    other.revoke("a")
    assert store.refresh() == frozenset({a.public})
    assert not store.is_trusted(a.public)
    assert store.is_trusted(b.public)
    assert store.refresh() == frozenset()


def test_junk_lookups_return_false(store):
    for junk in [b"", "x", b"\x00" * 32, b"!" * 40, "é" * 40]:
        assert store.is_trusted(junk) is False
        assert store.is_revoked(junk) is False
        assert store.name_of(junk) is None


def test_unreadable_certificate_is_skipped(store):
    good = keys.generate()
    store.enroll("good", good.public)
    (store.directory / "trusted" / "bad.key").write_text("public-key = \"nonsense\"\n")
    store.refresh()
    assert store.is_trusted(good.public)
    assert [t.name for t in store.list()] == ["good"]


def test_damaged_revocation_list_fails_closed(store):
    a = keys.generate()
    store.enroll("a", a.public)
    store.revoke("a")
    (store.directory / "revoked.json").write_text("{not json")
    store.refresh()  # a running store keeps its last good snapshot
    assert store.is_revoked(a.public)
    with pytest.raises(ConfigError, match="invalid"):
        TrustStore(store.directory)  # a new one refuses to start


def _keys_on_file(store: TrustStore) -> set[str]:
    doc = json.loads((store.directory / "revoked.json").read_text())
    return {e["key"] for e in doc["revoked"]}


def test_a_revocation_outlives_the_deletion_of_its_file(store):
    """Deleting revoked.json under a running process does not un-revoke: the key stays
    refused (re-enrolling it too, its certificate copied back too), and the next revoke
    writes it back."""
    other = TrustStore(store.directory)  # e.g. the CLI while the router runs
    a, b, c = keys.generate(), keys.generate(), keys.generate()
    other.enroll("a", a.public)
    other.enroll("b", b.public)
    cert = (store.directory / "trusted" / "a.key").read_bytes()
    other.revoke("a")
    store.refresh()
    assert store.is_revoked(a.public)
    (store.directory / "revoked.json").unlink()
    (store.directory / "trusted" / "a.key").write_bytes(cert)
    assert store.revoked_now(a.public)
    assert not store.is_trusted(a.public)
    assert store.is_trusted(b.public)
    with pytest.raises(RevokedKey):
        store.enroll("a2", a.public)
    store.revoke(c.public)
    assert _keys_on_file(store) == {a.public.decode(), c.public.decode()}


def test_a_revocation_outlives_an_edit_that_drops_it(store):
    a, b = keys.generate(), keys.generate()
    store.enroll("a", a.public)
    store.enroll("b", b.public)
    store.revoke("a")
    store.revoke("b")
    path = store.directory / "revoked.json"
    doc = json.loads(path.read_text())
    doc["revoked"] = [e for e in doc["revoked"] if e["key"] != a.public.decode()]
    path.write_text(json.dumps(doc))
    assert store.revoked_now(a.public)
    assert store.revoked_now(b.public)
    assert {r.public for r in store.revoked()} == {a.public, b.public}
    store.revoke(b.public)  # already revoked: the file is made whole again
    assert _keys_on_file(store) == {a.public.decode(), b.public.decode()}


def test_trusted_dir_is_readable_by_pyzmq(store):
    pair = keys.generate()
    store.enroll("zmq", pair.public)
    assert zmq.auth.load_certificates(str(store.directory / "trusted")) == {pair.public: True}
    doc = {"version": 1, "revoked": []}
    (store.directory / "revoked.json").write_text(json.dumps(doc))
    store.refresh()
    assert store.is_trusted(pair.public)
