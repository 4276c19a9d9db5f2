"""The follower's streaming loop (one thread receives, another appends) against a scripted leader
over a socket pair: every batch's CRC is checked before it counts, so a corrupt batch is refused,
nothing from its frame or after it reaches the log, and what came before it is appended and acked."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmbroker import records
from shmbroker.config import LogConfig
from shmbroker.errors import CorruptRecordError, RemoteProtocolError
from shmbroker.net import replication as wire
from shmbroker.net.replication import Kind
from shmbroker.workers.replicator import Follower, FrameReader, ReplicationSpec
from shmbroker.workers.topics import TopicStore
from tests.unit.disk.conftest import make_batch

TP = "t/0"
TIMEOUT_S = 10.0


def follower_on(data_dir: Path) -> Follower:
    TopicStore(data_dir).create("t", 1, {}, LogConfig())
    spec = ReplicationSpec(
        data_dir=data_dir,
        status_path=data_dir / "replication-status.json",
        node="b",
        listener="",
        peers=(),
        role="follower",
        epoch=0,
        lag_time_max_ms=30_000,
        socket_timeout_ms=int(TIMEOUT_S * 1000),
        key_file="",
        allowed_keys_dir="",
        log_config=LogConfig(),
    )
    return Follower(spec, Counter())


def frame(base_offset: int, batch_count: int, *, corrupt: int | None = None) -> tuple[bytes, int, int]:
    """A DATA frame of ``batch_count`` batches from ``base_offset`` (batch ``corrupt`` with one
    record byte flipped, so its CRC fails): the frame, its data bytes, the offset after it."""
    data = bytearray()
    offset = base_offset
    for i in range(batch_count):
        batch = make_batch([b"value-%d-%d" % (offset, k) for k in range(3)])
        records.stamp(batch, base_offset=offset, leader_epoch=0)
        if i == corrupt:
            batch[-1] ^= 0xFF
        data += batch
        offset = records.parse_batch_header(batch).next_offset
    body = {"tp": TP, "base_offset": base_offset, "next_offset": offset}
    return wire.encode(Kind.DATA, body, len(data)) + bytes(data), len(data), offset


def stream(follower: Follower, pair: Pair, frames: list[bytes]) -> list[BaseException]:
    """Run the follower's loop on one end of ``pair``, send ``frames`` from the other, close it;
    return what the loop raised. The follower's ACKs wait in the socket buffer."""
    leader, follower_end = pair
    raised: list[BaseException] = []

    def run() -> None:
        try:
            follower._stream(follower_end, FrameReader(follower_end))
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for f in frames:
        try:
            leader.sendall(f)
        except OSError:  # the follower dropped the connection at a bad frame
            break
    leader.shutdown(socket.SHUT_WR)
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), "the follower's loop did not end"
    return raised


Pair = tuple[socket.socket, socket.socket]  # (leader end, follower end)


@pytest.fixture
def pair() -> Iterator[Pair]:
    leader, follower_end = socket.socketpair()
    follower_end.settimeout(TIMEOUT_S)
    leader.settimeout(TIMEOUT_S)
    with leader, follower_end:
        yield leader, follower_end


def acked(leader: socket.socket) -> list[int]:
    """The log ends the follower acknowledged, in order."""
    reader, out = FrameReader(leader), []
    while True:
        try:
            kind, body, _data = reader.read()
        except (ConnectionError, OSError):
            return out
        assert kind == Kind.ACK
        out.append(body["leo"][TP])


def test_good_frames_are_appended_and_acked_in_order(tmp_path: Path, pair: Pair) -> None:
    leader, follower_end = pair
    follower = follower_on(tmp_path)
    first, _, end1 = frame(0, 4)
    second, _, end2 = frame(end1, 2)
    raised = stream(follower, pair, [first, second])
    follower_end.close()
    assert [type(e) for e in raised] == [ConnectionError]  # the leader closed: the loop ends
    assert follower.logs[TP].log_end_offset == end2
    assert acked(leader) == [end1, end2]
    follower.close()


def test_a_corrupt_batch_is_refused_and_nothing_from_it_on_is_appended(tmp_path: Path, pair: Pair) -> None:
    leader, follower_end = pair
    follower = follower_on(tmp_path)
    good, good_bytes, end1 = frame(0, 3)
    bad, _, end2 = frame(end1, 3, corrupt=1)  # its first batch is fine, the second is not
    after, _, _ = frame(end2, 2)
    raised = stream(follower, pair, [good, bad, after])
    follower_end.close()
    assert len(raised) == 1 and isinstance(raised[0], CorruptRecordError), raised
    lg = follower.logs[TP]
    assert lg.log_end_offset == end1  # not even the good first batch of the bad frame
    assert acked(leader) == [end1]
    stored = lg.read(0, 1 << 20)
    assert stored is not None and stored.size == good_bytes
    follower.close()


def test_a_frame_that_does_not_continue_the_log_is_refused(tmp_path: Path, pair: Pair) -> None:
    _leader, follower_end = pair
    follower = follower_on(tmp_path)
    good, _, end1 = frame(0, 2)
    gap, _, _ = frame(end1 + 5, 2)  # checks out against its own base offset; the log ends at end1
    raised = stream(follower, pair, [good, gap])
    follower_end.close()
    assert len(raised) == 1 and isinstance(raised[0], RemoteProtocolError), raised
    assert follower.logs[TP].log_end_offset == end1
    follower.close()
