"""Identity keys: zmq-compatible files, 0600, one key for CURVE and NaCl."""

from __future__ import annotations

import os
import stat

import pytest
import zmq
import zmq.auth
from nacl.public import Box, PrivateKey
from zmq.utils import z85

from mesh.errors import ConfigError
from security import keys


def test_new_keys_writes_zmq_certificates_with_mode_0600(tmp_path):
    pair = keys.new_keys("alice", tmp_path / "keys")
    pub, sec = tmp_path / "keys" / "alice.key", tmp_path / "keys" / "alice.key_secret"
    assert zmq.auth.load_certificate(pub) == (pair.public, None)
    assert zmq.auth.load_certificate(sec) == (pair.public, pair.secret)
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")] == []


def test_keys_dir_defaults_to_agp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AGP_HOME", str(tmp_path / "home"))
    assert keys.default_keys_dir() == tmp_path / "home" / "keys"
    pair = keys.new_keys("bob")
    assert keys.load_keypair("bob") == pair
    assert keys.load_public("bob") == pair.public


def test_one_keypair_serves_curve_and_nacl_box():
    a, b = keys.generate(), keys.generate()
    assert len(a.public_raw) == 32
    assert len(a.secret_raw) == 32
    assert z85.encode(a.public_raw) == a.public
    assert bytes(PrivateKey(a.secret_raw).public_key) == a.public_raw
    box_ab = Box(a.private_key(), b.public_key())
    box_ba = Box(b.private_key(), a.public_key())
    assert box_ba.decrypt(box_ab.encrypt(b"same key")) == b"same key"


def test_load_by_path_of_either_file(tmp_path):
    pair = keys.new_keys("carol", tmp_path)
    assert keys.load_keypair(tmp_path / "carol.key_secret") == pair
    assert keys.load_keypair(str(tmp_path / "carol.key")) == pair
    assert keys.load_public(tmp_path / "carol.key") == pair.public


def test_refuses_to_overwrite_existing_keys(tmp_path):
    first = keys.new_keys("dave", tmp_path)
    with pytest.raises(ConfigError, match="already exist"):
        keys.new_keys("dave", tmp_path)
    assert keys.load_keypair("dave", tmp_path) == first
    second = keys.new_keys("dave", tmp_path, overwrite=True)
    assert keys.load_keypair("dave", tmp_path) == second != first


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 65, "sp ace", "a..b"])
def test_refuses_bad_key_names(tmp_path, name):
    with pytest.raises(ConfigError):
        keys.new_keys(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_secret_readable_by_others_is_refused(tmp_path):
    keys.new_keys("erin", tmp_path)
    os.chmod(tmp_path / "erin.key_secret", 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        keys.load_keypair("erin", tmp_path)


def test_mismatched_public_and_secret_refused():
    a, b = keys.generate(), keys.generate()
    with pytest.raises(ConfigError, match="does not belong"):
        keys.KeyPair(a.public, b.secret)


def test_tampered_secret_file_refused(tmp_path):
    pair = keys.new_keys("fred", tmp_path)
    other = keys.generate()
    path = tmp_path / "fred.key_secret"
    path.write_text(path.read_text().replace(pair.secret.decode(), other.secret.decode()))
    with pytest.raises(ConfigError):
        keys.load_keypair("fred", tmp_path)


def test_reads_certificates_made_by_pyzmq(tmp_path):
    pub_file, sec_file = zmq.auth.create_certificates(str(tmp_path), "gina")
    os.chmod(sec_file, 0o600)
    pair = keys.load_keypair("gina", tmp_path)
    assert (pair.public, pair.secret) == zmq.auth.load_certificate(sec_file)


def test_normalize_key_forms_and_refusals():
    pair = keys.generate()
    assert keys.normalize_key(pair.public_raw) == pair.public
    assert keys.normalize_key(pair.public.decode()) == pair.public
    assert keys.raw_key(pair.public) == pair.public_raw
    for bad in [b"", b"short", "é" * 40, b"~" * 40, b"#" * 40, 12345, pair.public + b"x"]:
        with pytest.raises(ConfigError):
            keys.normalize_key(bad)  # type: ignore[arg-type]


def test_missing_or_oversized_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        keys.load_keypair("nobody", tmp_path)
    big = tmp_path / "big.key"
    big.write_bytes(b"#" * (keys.MAX_CERT_BYTES + 10))
    with pytest.raises(ConfigError, match="larger"):
        keys.read_certificate(big)
    empty = tmp_path / "empty.key"
    empty.write_text("metadata\ncurve\n")
    with pytest.raises(ConfigError, match="no public key"):
        keys.read_certificate(empty)


def test_repr_never_shows_the_secret():
    pair = keys.generate()
    assert pair.secret.decode() not in repr(pair)
    assert pair.public.decode() in repr(pair)
