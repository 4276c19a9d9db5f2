"""Idempotent remote produce against a real broker: a PRODUCE resent with the same batch bytes
(the client's retry after a timeout) is appended once and answered with the first base offset,
through a real ZeroMQ socket, in one worker turn or later, and after a broker restart."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from shmbroker import AdminClient, Consumer, NewTopic, Producer, TopicPartition, records
from shmbroker.net.protocol import ApiKey, ClientState, Message
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration


class RawClient:
    """A bare DEALER speaking shmbroker.net.protocol: nothing of the Producer's retry logic."""

    def __init__(self, address: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.state = ClientState()

    def send(self, api: ApiKey, body: dict[str, Any], data: list[Any] | None = None) -> int:
        cid, frames = self.state.request(api, body, data)
        self.socket.send_multipart(frames)
        return cid

    def replies(self, n: int, timeout_s: float = 10.0) -> dict[int, Message]:
        got: dict[int, Message] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            assert self.socket.poll(max(1, int((deadline - time.monotonic()) * 1000))), "no reply in time"
            reply = self.state.receive(self.socket.recv_multipart())
            if reply is not None:
                got[reply.correlation_id] = reply
        return got

    def call(self, api: ApiKey, body: dict[str, Any], data: list[Any] | None = None) -> Message:
        cid = self.send(api, body, data)
        reply = self.replies(1)[cid]
        reply.raise_for_error()
        return reply

    def produce(self, topic: str, batch: bytes, *, times: int = 1) -> list[int]:
        """Send ``batch`` ``times`` times before reading any reply; the base offset of each."""
        body = {"topic": topic, "partitions": [0], "acks": 1}
        cids = [self.send(ApiKey.PRODUCE, body, [batch]) for _ in range(times)]
        got = self.replies(times)
        results = [got[cid].body["results"][0] for cid in cids]
        assert all(r["error_code"] == 0 for r in results), results
        return [int(r["base_offset"]) for r in results]

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


def create(address: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(topic, 1)])[topic].result()
    admin.close()


def batch_of(values: list[bytes], producer_id: int, base_sequence: int) -> bytes:
    return bytes(
        records.encode_values(
            values, timestamp_ms=int(time.time() * 1000), producer_id=producer_id, base_sequence=base_sequence
        )
    )


def read_values(address: str, topic: str) -> list[bytes]:
    """Everything below the high watermark (which is the log end here: acks=1, no replicas)."""
    admin = AdminClient({"bootstrap.servers": address})
    [row] = [r for r in admin.status()["partitions"] if r["topic"] == topic]
    admin.close()
    consumer = Consumer({"bootstrap.servers": address, "shmbroker.transport": "zmq"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < row["high_watermark"] and time.monotonic() < deadline:
        got.extend(m.value() for m in consumer.consume(1000, timeout=0.2))
    consumer.close()
    return got


def test_resent_remote_batch_is_appended_once_with_one_offset(broker: BrokerProcess) -> None:
    create(broker.address, "idem")
    client = RawClient(broker.address)
    try:
        producer_id = int(client.call(ApiKey.INIT_PRODUCER_ID, {}).body["producer_id"])
        assert producer_id >= 0
        assert int(client.call(ApiKey.INIT_PRODUCER_ID, {}).body["producer_id"]) != producer_id
        first = batch_of([b"one", b"two"], producer_id, 0)
        # Two copies in flight at once: the worker may drain both in one turn.
        assert client.produce("idem", first, times=2) == [0, 0]
        # A copy after the answer (a retry whose first reply was lost): remembered, same answer.
        assert client.produce("idem", first) == [0]
        assert client.produce("idem", batch_of([b"three"], producer_id, 1), times=3) == [2, 2, 2]
    finally:
        client.close()
    assert read_values(broker.address, "idem") == [b"one", b"two", b"three"]


def test_remote_batches_without_producer_id_are_appended_every_time(broker: BrokerProcess) -> None:
    create(broker.address, "plain")
    client = RawClient(broker.address)
    try:
        assert client.produce("plain", batch_of([b"x"], -1, -1), times=2) == [0, 1]
    finally:
        client.close()
    assert read_values(broker.address, "plain") == [b"x", b"x"]


def test_remote_and_lane_producer_ids_differ(broker: BrokerProcess) -> None:
    import os

    create(broker.address, "ids")
    client = RawClient(broker.address)
    try:
        remote = int(client.call(ApiKey.INIT_PRODUCER_ID, {}).body["producer_id"])
        lane = client.call(ApiKey.OPEN_LANE, {"topic": "ids", "partition": 0, "pid": os.getpid()}).body
        client.call(ApiKey.CLOSE_LANE, {"topic": "ids", "partition": 0, "lane": lane["lane"]})
        assert int(client.call(ApiKey.INIT_PRODUCER_ID, {}).body["producer_id"]) not in (
            remote,
            lane["producer_id"],
        )
        assert lane["producer_id"] != remote
    finally:
        client.close()


def test_open_lane_gives_a_dead_lanes_producer_id_again_but_never_a_live_ones(broker: BrokerProcess) -> None:
    """What a producer whose lane died with an earlier broker asks for (test_producer_restart.py)."""
    import os

    create(broker.address, "reids")
    client = RawClient(broker.address)
    where = {"topic": "reids", "partition": 0, "pid": os.getpid()}
    try:
        first = client.call(ApiKey.OPEN_LANE, where).body
        # Its own live lane named: that lane, nothing new.
        again = client.call(ApiKey.OPEN_LANE, {**where, "lane": first["lane"], "producer_id": 7}).body
        assert (again["lane"], again["producer_id"]) == (first["lane"], first["producer_id"])
        # A lane this broker does not know, with an unused id: a new lane with that id.
        dead_id = first["producer_id"] - 1000
        revived = client.call(ApiKey.OPEN_LANE, {**where, "lane": "shmb-gone", "producer_id": dead_id}).body
        assert revived["lane"] != first["lane"] and revived["producer_id"] == dead_id
        # The id of a live lane is never handed out twice.
        taken = client.call(ApiKey.OPEN_LANE, {**where, "producer_id": first["producer_id"]}).body
        assert taken["producer_id"] not in (first["producer_id"], dead_id)
        for bad in (-5, 1 << 63, "x"):
            odd = client.call(ApiKey.OPEN_LANE, {**where, "producer_id": bad}).body
            assert odd["producer_id"] not in (bad, first["producer_id"], dead_id)
            client.call(ApiKey.CLOSE_LANE, {"topic": "reids", "partition": 0, "lane": odd["lane"]})
        for lane in (first, revived, taken):
            client.call(ApiKey.CLOSE_LANE, {"topic": "reids", "partition": 0, "lane": lane["lane"]})
    finally:
        client.close()


def test_resent_remote_batch_is_deduplicated_after_a_broker_restart(tmp_path: Path, free_port: int) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(data, free_port).start()
    try:
        create(broker.address, "again")
        client = RawClient(broker.address)
        producer_id = int(client.call(ApiKey.INIT_PRODUCER_ID, {}).body["producer_id"])
        batch = batch_of([b"once"], producer_id, 0)
        assert client.produce("again", batch) == [0]
        client.close()
    finally:
        broker.stop()
    broker = BrokerProcess(data, free_port).start()
    try:
        client = RawClient(broker.address)
        try:
            # The restarted worker read its log tail: the retry is known, not appended again.
            assert client.produce("again", batch) == [0]
            fresh = int(client.call(ApiKey.INIT_PRODUCER_ID, {}).body["producer_id"])
            assert fresh != producer_id
        finally:
            client.close()
        assert read_values(broker.address, "again") == [b"once"]
    finally:
        broker.stop()


@pytest.mark.parametrize(("idempotence", "stamped"), [(True, True), (False, False)])
def test_remote_producer_stamps_a_broker_issued_id(
    broker: BrokerProcess, idempotence: bool, stamped: bool
) -> None:
    create(broker.address, "stamp")
    producer = Producer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": "zmq", "enable.idempotence": idempotence}
    )
    for n in range(3):
        producer.produce("stamp", f"r{n}".encode(), partition=0)
        assert producer.flush(10) == 0
    producer.close()
    [segment] = sorted((broker.data_dir / "stamp-0").glob("*.log"))
    # The three batches, one per flush (zeros may follow: the log grows its file ahead).
    headers = [h for _position, h in itertools.islice(records.iter_batches(segment.read_bytes()), 3)]
    assert [h.base_sequence for h in headers] == ([0, 1, 2] if stamped else [-1, -1, -1])
    assert len({h.producer_id for h in headers}) == 1
    assert (headers[0].producer_id >= 0) == stamped
