"""The replication channel's wire format: frames between a leader and its followers, no I/O.

Plain TCP, its own listener (``replication.listener``), never the client listener: a client cannot
send a replica fetch or move the in-sync set. A follower (or a prober) connects to the leader::

    follower                                   leader
    HELLO {node, purpose, nonce, key_id}  ->
                                          <-   CHALLENGE {role, epoch, nonce, auth}
    AUTH {mac}                            ->                     (only when auth is on)
                                          <-   WELCOME {mac}     (the leader proves the key too)
    FOLLOW {epoch, partitions}            ->   each partition: log end, log start, epoch cache
                                          <-   FOLLOW_OK {epoch, topics, start}: where each
                                               partition must be cut (KIP-101, by epochs)
    ACK {leo}                             ->   log ends after the cut
                                          <-   DATA {tp, base_offset, next_offset} + batch bytes
                                          <-   TOPICS {topics} | HEARTBEAT {hw}
    ACK {leo}                             ->   after each append, and for every heartbeat
    ERROR {code, message}                 <>   then the sender closes

Every frame: a 16-byte header, a JSON body, then ``data_bytes`` of raw RecordBatch v2 bytes
(DATA only; the leader sends them with ``socket.sendfile`` straight from the segment file)::

    offset size field
         0    2 magic b"SR"
         2    1 version (1)
         3    1 kind (Kind)
         4    4 body_bytes (u32, <= MAX_BODY_BYTES)
         8    8 data_bytes (u64, <= MAX_DATA_BYTES; 0 unless DATA)

A partition is named ``"<topic>/<partition>"`` in bodies (a topic name cannot hold "/").
Authentication (optional, required beyond loopback): each follower has its own secret; the leader
keeps the allowed ones. Both sides prove they hold it with HMAC-SHA256 over both nonces, so
neither a client nor a stranger's box can pose as a follower or a leader. It authenticates; it does
not encrypt (the link carries the same bytes a consumer may read).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from enum import IntEnum
from pathlib import Path
from typing import Any

from shmbroker.errors import ClusterAuthorizationError, RemoteProtocolError

MAGIC = b"SR"
VERSION = 1
HEADER = struct.Struct("<2sBBIQ")  # magic, version, kind, body_bytes, data_bytes
MAX_BODY_BYTES = 16 << 20  # a FOLLOW with thousands of partitions and their epoch caches fits
MAX_DATA_BYTES = 256 << 20
NONCE_BYTES = 16


class Kind(IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    FOLLOW = 5
    FOLLOW_OK = 6
    DATA = 7
    TOPICS = 8
    HEARTBEAT = 9
    ACK = 10
    ERROR = 11


# What each body must hold, and of what type: checked on arrival, so handlers index freely.
REQUIRED: dict[Kind, dict[str, type | tuple[type, ...]]] = {
    Kind.HELLO: {"node": str, "purpose": str, "nonce": str, "key_id": str},
    Kind.CHALLENGE: {"role": str, "epoch": int, "nonce": str, "auth": bool},
    Kind.AUTH: {"mac": str},
    Kind.WELCOME: {"mac": str},
    Kind.FOLLOW: {"epoch": int, "partitions": dict},
    Kind.FOLLOW_OK: {"epoch": int, "topics": dict, "start": dict},
    Kind.DATA: {"tp": str, "base_offset": int, "next_offset": int},
    Kind.TOPICS: {"topics": dict},
    Kind.HEARTBEAT: {"hw": dict},
    Kind.ACK: {"leo": dict},
    Kind.ERROR: {"code": int, "message": str},
}


def encode(kind: Kind, body: dict[str, Any], data_bytes: int = 0) -> bytes:
    """Header and body of one frame; DATA's ``data_bytes`` raw bytes follow on the wire."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    if len(raw) > MAX_BODY_BYTES or not 0 <= data_bytes <= MAX_DATA_BYTES:
        raise ValueError(f"frame too large: body {len(raw)} bytes, data {data_bytes} bytes")
    return HEADER.pack(MAGIC, VERSION, kind, len(raw), data_bytes) + raw


def parse_header(raw: bytes | bytearray | memoryview) -> tuple[Kind, int, int]:
    """``(kind, body_bytes, data_bytes)`` of a 16-byte header; RemoteProtocolError if it is not one."""
    if len(raw) != HEADER.size:
        raise RemoteProtocolError(f"replication header of {len(raw)} bytes; want {HEADER.size}")
    magic, version, kind, body_bytes, data_bytes = HEADER.unpack(raw)
    if magic != MAGIC or version != VERSION:
        raise RemoteProtocolError(f"not a replication frame: magic {magic!r}, version {version}")
    try:
        kind = Kind(kind)
    except ValueError:
        raise RemoteProtocolError(f"unknown replication frame kind {kind}") from None
    if body_bytes > MAX_BODY_BYTES or data_bytes > MAX_DATA_BYTES:
        raise RemoteProtocolError(f"replication frame too large: body {body_bytes}, data {data_bytes}")
    if data_bytes and kind != Kind.DATA:
        raise RemoteProtocolError(f"{kind.name} frame carries {data_bytes} data bytes")
    return kind, body_bytes, data_bytes


def parse_body(kind: Kind, raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        body = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RemoteProtocolError(f"{kind.name} body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError(f"{kind.name} body is not an object")
    for name, expected in REQUIRED[kind].items():
        value = body.get(name)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise RemoteProtocolError(f"{kind.name} needs {name!r} of type {expected}; got {value!r}")
    return body


def tp_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def parse_tp(name: object) -> tuple[str, int]:
    if not isinstance(name, str) or "/" not in name:
        raise RemoteProtocolError(f"bad partition name {name!r}")
    topic, _, partition = name.rpartition("/")
    if not partition.isdigit():
        raise RemoteProtocolError(f"bad partition name {name!r}")
    return topic, int(partition)


def offsets_of(mapping: dict[str, Any], what: str) -> dict[str, int]:
    """A ``{tp: offset}`` body field, every value checked to be a non-negative int."""
    out: dict[str, int] = {}
    for name, value in mapping.items():
        parse_tp(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RemoteProtocolError(f"{what} of {name!r} is {value!r}; want an offset")
        out[name] = value
    return out


# ---- authentication --------------------------------------------------------------------------


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()


def follower_proof(secret: bytes, leader_nonce: str, follower_nonce: str) -> str:
    return mac(secret, "follower", leader_nonce, follower_nonce)


def leader_proof(secret: bytes, leader_nonce: str, follower_nonce: str) -> str:
    return mac(secret, "leader", leader_nonce, follower_nonce)


def check_proof(expected: str, got: str) -> None:
    if not hmac.compare_digest(expected.encode(), got.encode()):
        raise ClusterAuthorizationError("replication peer's proof of key does not match")


def write_key(path: Path, key_id: str) -> None:
    """A new secret for the follower called ``key_id``: one line ``key_id:hex``, mode 0600.
    The same file goes into the leader's ``replication.allowed.keys.dir``."""
    if not key_id or not key_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"key id {key_id!r}: letters, digits, - and _ only")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{key_id}:{secrets.token_hex(32)}\n")
    path.chmod(0o600)


def read_key(path: Path) -> tuple[str, bytes]:
    """``(key_id, secret)`` of a key file; ClusterAuthorizationError if it is not one."""
    try:
        key_id, _, hex_secret = path.read_text().strip().partition(":")
        secret = bytes.fromhex(hex_secret)
    except (OSError, ValueError) as exc:
        raise ClusterAuthorizationError(f"cannot read replication key {path}: {exc}") from None
    if not key_id or len(secret) < 16:
        raise ClusterAuthorizationError(f"replication key {path} is not 'key_id:hex secret'")
    return key_id, secret


def allowed_secret(directory: Path, key_id: str) -> bytes:
    """The secret of follower ``key_id`` from the leader's allow-list directory (``<key_id>.key``)."""
    if not key_id or not key_id.replace("-", "").replace("_", "").isalnum():
        raise ClusterAuthorizationError(f"bad replication key id {key_id[:40]!r}")
    path = directory / f"{key_id}.key"
    if not path.exists():
        raise ClusterAuthorizationError(f"replication key {key_id!r} is not in {directory}")
    found_id, secret = read_key(path)
    if found_id != key_id:
        raise ClusterAuthorizationError(f"{path} holds key {found_id!r}, not {key_id!r}")
    return secret
