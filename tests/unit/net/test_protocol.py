"""The wire protocol, sans-I/O: round trips, every bound, and random bytes never crash the decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmbroker.errors import (
    InvalidTopicError,
    LocalProtocolError,
    RemoteProtocolError,
    UnknownTopicOrPartitionError,
)
from shmbroker.net import protocol
from shmbroker.net.protocol import HEADER, ApiKey, ClientState, decode, encode_request, field_of


def test_request_and_reply_round_trip() -> None:
    frames = encode_request(ApiKey.PRODUCE, 7, {"topic": "t", "partitions": [0]}, [b"batch"])
    request = decode(frames)
    assert (request.api, request.correlation_id, request.is_reply) == (ApiKey.PRODUCE, 7, False)
    assert request.body == {"topic": "t", "partitions": [0]}
    assert [bytes(d) for d in request.data] == [b"batch"]
    reply = decode(protocol.encode_reply(request, {"results": []}))
    assert reply.is_reply and reply.correlation_id == 7 and reply.error_code == 0


def test_error_reply_carries_the_typed_error() -> None:
    request = decode(encode_request(ApiKey.METADATA, 1, {}))
    reply = decode(protocol.encode_error_reply(request, InvalidTopicError("bad name")))
    with pytest.raises(InvalidTopicError, match="bad name"):
        reply.raise_for_error()


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "header and a body"),
        ([b"\x01\x01\x00\x00"], "header and a body"),
        ([b"\x01\x01\x00", b"{}"], "header of 3 bytes"),
        ([HEADER.pack(9, 1, 0, 1), b"{}"], "version 9"),
        ([HEADER.pack(1, 200, 0, 1), b"{}"], "unknown api 200"),
        ([HEADER.pack(1, 1, 0, 1), b"{not json"], "not JSON"),
        ([HEADER.pack(1, 1, 0, 1), b"[1, 2]"], "JSON list"),
        ([HEADER.pack(1, 1, 0, 1), b"\xff\xfe"], "not JSON"),
        ([HEADER.pack(1, 1, 0, 1), b" " * (protocol.MAX_BODY_BYTES + 1)], "body of"),
        ([HEADER.pack(1, 8, 0, 1), b"{}", *([b""] * (protocol.MAX_DATA_FRAMES + 1))], "data frames"),
    ],
    ids=[
        "empty",
        "one-frame",
        "short-header",
        "version",
        "api",
        "json",
        "list",
        "utf8",
        "big-body",
        "frames",
    ],
)
def test_malformed_messages_raise_remote_protocol_error(frames: list[bytes], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(frames)


def test_local_limits_raise_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(ApiKey.METADATA, 2**32, {})
    with pytest.raises(LocalProtocolError):
        encode_request(ApiKey.FETCH, 1, {}, [b""] * (protocol.MAX_DATA_FRAMES + 1))


def test_field_of_checks_types_and_presence() -> None:
    body = {"n": 3, "flag": True, "s": "x", "none": None}
    assert field_of(body, "n", int) == 3
    with pytest.raises(RemoteProtocolError, match="expected int"):
        field_of(body, "flag", int)  # a bool is not an offset
    with pytest.raises(RemoteProtocolError, match="lacks field"):
        field_of(body, "missing", int)
    assert field_of(body, "missing", int, default=5) == 5
    assert field_of(body, "none", list, default=None) is None


def test_client_state_matches_replies_and_ignores_stale_ones() -> None:
    client = ClientState()
    cid, frames = client.request(ApiKey.METADATA, {})
    reply_frames = protocol.encode_reply(decode(frames), {"topics": []})
    client.forget(cid)
    assert client.receive(reply_frames) is None  # timed out earlier: ignored
    cid2, frames2 = client.request(ApiKey.STATUS, {})
    assert client.receive(protocol.encode_reply(decode(frames2), {})).correlation_id == cid2
    with pytest.raises(RemoteProtocolError, match="expected a reply"):
        client.receive(frames2)


def test_unknown_error_codes_fall_back_to_the_base_error() -> None:
    request = decode(encode_request(ApiKey.METADATA, 1, {}))
    reply = decode(protocol.encode_reply(request, {"error_code": 3, "error_message": "gone"}))
    with pytest.raises(UnknownTopicOrPartitionError):
        reply.raise_for_error()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_never_crash_the_decoder(frames: list[bytes]) -> None:
    try:
        message = decode(frames)
    except RemoteProtocolError:
        return
    assert isinstance(message.body, dict)
