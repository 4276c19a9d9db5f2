"""The shmbroker wire protocol over ZeroMQ multipart messages, version 1. Sans-I/O: no socket, no clock.

A request from a client's DEALER to the broker's ROUTER, and its reply, are each one multipart
message:

    frame 0  header, little-endian, 8 bytes
             offset size field
                  0    1 version (= 1)
                  1    1 api (ApiKey)
                  2    2 flags (bit 0: reply)
                  4    4 correlation_id (the client's; echoed in the reply)
    frame 1  body: one UTF-8 JSON object, at most ``MAX_BODY_BYTES``. Control-plane fields only
             (topic, partition, acks, offsets...); replies carry ``error_code`` (Kafka's codes,
             0 = none) and ``error_message``.
    frame 2+ data: whole RecordBatch v2 byte ranges, never re-encoded (produce: one batch per
             frame; fetch: the log's bytes as one frame per partition read).

Revisions. The header's ``version`` changes only when the frame layout does; APIs and body fields
are added under it, and METADATA replies carry ``protocol_revision`` so a client knows what it may
send (absent = 1):

    1  the APIs up to DELETE_GROUP; remote batches carry producer_id -1 and are never deduplicated
    2  INIT_PRODUCER_ID: request ``{}``, reply ``{"producer_id": int, "producer_epoch": 0}``. The id
       comes from the counter the broker's local lanes draw from, so the two never collide. An
       idempotent remote producer stamps it, and ``base_sequence`` = its per-partition BATCH number
       (0, 1, 2...; wraps at 2**31, as the local lanes number theirs), into every RecordBatch v2 and
       resends a timed-out or retriable-failed PRODUCE with the same bytes. The partition worker
       appends a (producer_id, base_sequence) once; a repeat within its dedup window
       (workers/partition.py DEDUP_WINDOW batches) is answered with the first append's base offset.
    3  GOODBYE (no reply): sent by a closing client, so the router frees its ``max.connections``
       slot at once. PROMOTE: make a follower broker the leader. INTERNAL_*: router <-> supervisor
       only (workers/router.py); the router refuses them from clients.

JSON keeps the control plane readable with ``tcpdump``/``zmq`` tools and costs a few microseconds
per request; record data never passes through it. Every size and count is bounded before anything
is allocated, and every violation raises RemoteProtocolError naming the limit.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from shmbroker.errors import BrokerError, LocalProtocolError, RemoteProtocolError, error_for_code

VERSION = 1
REVISION = 3  # see "Revisions" above; METADATA replies carry it as protocol_revision
HEADER = struct.Struct("<BBHI")  # version, api, flags, correlation_id
FLAG_REPLY = 0x1
MAX_BODY_BYTES = 1 << 20
MAX_DATA_FRAMES = 1024
MAX_CORRELATION_ID = 2**32 - 1


class ApiKey(IntEnum):
    METADATA = 1  # topics, partitions, data dir and host identity (for the shared-memory path)
    CREATE_TOPICS = 2
    DELETE_TOPICS = 3
    LIST_OFFSETS = 4  # earliest / latest / by timestamp
    OPEN_LANE = 5  # hand a shared-memory lane for (topic, partition) to a local producer
    CLOSE_LANE = 6
    STATUS = 7  # processes, offsets, counters
    PRODUCE = 8  # remote produce: batches in data frames
    FETCH = 9  # remote fetch: log bytes in data frames
    # Consumer groups: relayed by the broker to the group coordinator process (workers/coordinator.py).
    JOIN_GROUP = 10
    SYNC_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    OFFSET_COMMIT = 14
    OFFSET_FETCH = 15
    LIST_GROUPS = 16
    DESCRIBE_GROUP = 17
    RESET_OFFSETS = 18
    DELETE_GROUP = 19
    PROMOTE = 30  # make this follower the leader, with a new leader epoch (`shmbroker promote`)
    # Between the router process and the supervisor only (workers/router.py); refused from clients.
    INTERNAL_PARTITIONS = 40  # -> role, [(topic, partition, control block name, directory)]
    INTERNAL_OPEN_ROUTER_LANE = 41  # a trusted lane for the router's remote produce
    INTERNAL_ROUTER_READY = 42  # the router has bound the public listener
    INIT_PRODUCER_ID = 20  # revision 2: a producer id for an idempotent remote producer
    GOODBYE = 21  # revision 3: the client closes; no reply. Frees its max.connections slot at once


_API_BY_VALUE = {int(api): api for api in ApiKey}  # ApiKey(value) is a Python-level enum call per message
GROUP_APIS = frozenset(range(ApiKey.JOIN_GROUP, ApiKey.DELETE_GROUP + 1))
INTERNAL_APIS = frozenset(
    {ApiKey.INTERNAL_PARTITIONS, ApiKey.INTERNAL_OPEN_ROUTER_LANE, ApiKey.INTERNAL_ROUTER_READY}
)


@dataclass(frozen=True)
class Message:
    """One decoded request or reply."""

    api: ApiKey
    correlation_id: int
    body: dict[str, Any]
    data: list[memoryview] = field(default_factory=list)
    is_reply: bool = False

    @property
    def error_code(self) -> int:
        return int(self.body.get("error_code", 0))

    def raise_for_error(self) -> None:
        """Raise the typed error a reply carries, if any."""
        if self.error_code:
            raise error_for_code(self.error_code, str(self.body.get("error_message", "")))


def _encode(api: int, correlation_id: int, flags: int, body: dict[str, Any], data: list[Any]) -> list[Any]:
    if not 0 <= correlation_id <= MAX_CORRELATION_ID:
        raise LocalProtocolError(f"correlation_id {correlation_id} outside u32")
    if len(data) > MAX_DATA_FRAMES:
        raise LocalProtocolError(f"{len(data)} data frames; at most {MAX_DATA_FRAMES} per message")
    encoded = json.dumps(body, separators=(",", ":")).encode()
    if len(encoded) > MAX_BODY_BYTES:
        raise LocalProtocolError(f"body of {len(encoded)} bytes; at most {MAX_BODY_BYTES}")
    return [HEADER.pack(VERSION, api, flags, correlation_id), encoded, *data]


def encode_request(
    api: ApiKey, correlation_id: int, body: dict[str, Any], data: list[Any] | None = None
) -> list[Any]:
    return _encode(api, correlation_id, 0, body, data or [])


def encode_reply(request: Message, body: dict[str, Any], data: list[Any] | None = None) -> list[Any]:
    body.setdefault("error_code", 0)
    return _encode(request.api, request.correlation_id, FLAG_REPLY, body, data or [])


def encode_error_reply(request: Message, error: BrokerError) -> list[Any]:
    return encode_reply(request, {"error_code": error.kafka_code, "error_message": str(error)})


def decode(frames: list[Any]) -> Message:
    """Decode one multipart message (frames as bytes, memoryview or zmq.Frame buffers)."""
    if len(frames) < 2:
        raise RemoteProtocolError(f"message of {len(frames)} frames; a header and a body are required")
    if len(frames) - 2 > MAX_DATA_FRAMES:
        raise RemoteProtocolError(f"{len(frames) - 2} data frames; at most {MAX_DATA_FRAMES}")
    header = memoryview(frames[0])
    if header.nbytes != HEADER.size:
        raise RemoteProtocolError(f"header of {header.nbytes} bytes; expected {HEADER.size}")
    version, api, flags, correlation_id = HEADER.unpack(header)
    if version != VERSION:
        raise RemoteProtocolError(f"protocol version {version}; this broker speaks {VERSION}")
    api_key = _API_BY_VALUE.get(api)
    if api_key is None:
        raise RemoteProtocolError(f"unknown api {api}")
    raw = memoryview(frames[1])
    if raw.nbytes > MAX_BODY_BYTES:
        raise RemoteProtocolError(f"body of {raw.nbytes} bytes; at most {MAX_BODY_BYTES}")
    try:
        body = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RemoteProtocolError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RemoteProtocolError(f"body is a JSON {type(body).__name__}; an object is required")
    return Message(
        api_key, correlation_id, body, [memoryview(f) for f in frames[2:]], bool(flags & FLAG_REPLY)
    )


def field_of(body: dict[str, Any], name: str, kind: type, *, default: Any = ...) -> Any:
    """A typed field of a request body; RemoteProtocolError names what is missing or wrong."""
    if name not in body:
        if default is ...:
            raise RemoteProtocolError(f"request lacks field {name!r}")
        return default
    value = body[name]
    if value is None and default is None:  # an explicit null where null is allowed
        return None
    # bool is an int in Python; a field that wants an int must not take True.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RemoteProtocolError(f"field {name!r} is {type(value).__name__}; expected {kind.__name__}")
    return value


class ClientState:
    """The client's side of one connection: correlation ids and what is in flight. No I/O."""

    def __init__(self) -> None:
        self._next_id = 1
        self.in_flight: dict[int, ApiKey] = {}

    def request(
        self, api: ApiKey, body: dict[str, Any], data: list[Any] | None = None
    ) -> tuple[int, list[Any]]:
        correlation_id = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < MAX_CORRELATION_ID else 1
        frames = encode_request(api, correlation_id, body, data)
        self.in_flight[correlation_id] = api
        return correlation_id, frames

    def receive(self, frames: list[Any]) -> Message | None:
        """The reply for a request in flight, or None for a stale one (its request timed out)."""
        reply = decode(frames)
        if not reply.is_reply:
            raise RemoteProtocolError(f"expected a reply, got a request for {reply.api.name}")
        api = self.in_flight.pop(reply.correlation_id, None)
        if api is None:
            return None
        if api != reply.api:
            raise RemoteProtocolError(
                f"reply {reply.correlation_id} is for {reply.api.name}, sent {api.name}"
            )
        return reply

    def forget(self, correlation_id: int) -> None:
        """Drop a request that timed out; a late reply to it is then ignored."""
        self.in_flight.pop(correlation_id, None)
