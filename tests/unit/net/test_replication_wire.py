"""The replication channel's frames and keys: round trips, and every malformed input a typed error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmbroker.errors import BrokerError, ClusterAuthorizationError, RemoteProtocolError
from shmbroker.net import replication as wire
from shmbroker.net.replication import Kind
from shmbroker.workers.replicator import FrameReader


def test_frames_round_trip_through_a_real_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        data = bytes(range(256)) * 40
        a.sendall(wire.encode(Kind.DATA, {"tp": "t/0", "base_offset": 5, "next_offset": 9}, len(data)) + data)
        a.sendall(wire.encode(Kind.ACK, {"leo": {"t/0": 9}}))
        reader = FrameReader(b)
        kind, body, got = reader.read()
        assert (kind, body["base_offset"], bytes(got)) == (Kind.DATA, 5, data)
        assert reader.expect(Kind.ACK) == {"leo": {"t/0": 9}}
        a.sendall(wire.encode(Kind.ERROR, {"code": 74, "message": "stale"}))
        with pytest.raises(BrokerError) as raised:
            reader.read()
        assert raised.value.kafka_name == "FENCED_LEADER_EPOCH"  # an ERROR frame comes out as its error


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"XX" + bytes(14), "magic"),
        (wire.HEADER.pack(wire.MAGIC, 9, Kind.ACK, 2, 0), "version"),
        (wire.HEADER.pack(wire.MAGIC, wire.VERSION, 99, 2, 0), "kind"),
        (wire.HEADER.pack(wire.MAGIC, wire.VERSION, Kind.ACK, wire.MAX_BODY_BYTES + 1, 0), "large"),
        (wire.HEADER.pack(wire.MAGIC, wire.VERSION, Kind.ACK, 2, 5), "data"),
        (b"SR\x01", "bytes"),
    ],
)
def test_bad_headers_are_typed_errors(header: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        wire.parse_header(header)


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        (Kind.ACK, b"not json"),
        (Kind.ACK, b"[1, 2]"),
        (Kind.ACK, b'{"leo": 5}'),
        (Kind.DATA, b'{"tp": "t/0", "base_offset": true, "next_offset": 1}'),
        (Kind.HELLO, b'{"node": "x"}'),
        (Kind.ACK, b"\xff\xfe"),
    ],
)
def test_bad_bodies_are_typed_errors(kind: Kind, raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        wire.parse_body(kind, raw)


def test_offsets_and_partition_names_are_checked() -> None:
    assert wire.offsets_of({"a.b/3": 7}, "leo") == {"a.b/3": 7}
    assert wire.parse_tp("x/y/2") == ("x/y", 2)  # rpartition: topics cannot hold '/', so this is caught later
    for bad in ({"t": 1}, {"t/x": 1}, {"t/0": -1}, {"t/0": "5"}, {"t/0": False}):
        with pytest.raises(RemoteProtocolError):
            wire.offsets_of(bad, "leo")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_a_protocol_error(header: bytes, body: bytes) -> None:
    try:
        kind, _body_bytes, _data_bytes = wire.parse_header(header)
        wire.parse_body(kind, body)
    except RemoteProtocolError:
        pass


def test_keys_prove_both_sides_and_refuse_strangers(tmp_path: Path) -> None:
    wire.write_key(tmp_path / "f1.key", "f1")
    assert (tmp_path / "f1.key").stat().st_mode & 0o777 == 0o600
    key_id, secret = wire.read_key(tmp_path / "f1.key")
    assert key_id == "f1" and len(secret) == 32
    assert wire.allowed_secret(tmp_path, "f1") == secret
    leader_nonce, follower_nonce = wire.new_nonce(), wire.new_nonce()
    proof = wire.follower_proof(secret, leader_nonce, follower_nonce)
    wire.check_proof(wire.follower_proof(secret, leader_nonce, follower_nonce), proof)
    with pytest.raises(ClusterAuthorizationError):  # a leader's proof is not a follower's
        wire.check_proof(wire.leader_proof(secret, leader_nonce, follower_nonce), proof)
    for bad_id in ("nobody", "../f1", ""):
        with pytest.raises(ClusterAuthorizationError):
            wire.allowed_secret(tmp_path, bad_id)
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(ClusterAuthorizationError):
        wire.allowed_secret(tmp_path, "junk")
