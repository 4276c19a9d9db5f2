"""The router process SIGKILLed under load: the supervisor restarts it, remote clients reconnect by
themselves, every acked record is read back (lost = 0), and idempotent retries store nothing twice."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from shmbroker import AdminClient, Consumer, NewTopic, Producer, TopicPartition
from shmbroker.client.types import KafkaError
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration

TOPIC = "through-the-router"
PARTITIONS = 2
RECORDS = 800_000


def _router_pid(broker: BrokerProcess, not_pid: int = 0, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in broker.children():
            try:
                if "shmbroker: router" in " ".join(child.cmdline()) and child.pid != not_pid:
                    return int(child.pid)
            except Exception:
                continue
        time.sleep(0.005)
    raise AssertionError("no router process")


@pytest.mark.parametrize("kills", [1, 2])
def test_router_killed_under_load_restarts_and_loses_nothing(broker: BrokerProcess, kills: int) -> None:
    remote = {"bootstrap.servers": broker.address, "shmbroker.transport": "zmq"}
    admin = AdminClient(remote)
    try:
        for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS)]).values():
            future.result()
    finally:
        admin.close()
    acked: dict[tuple[int, int], bytes] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        if err is None:
            acked[(msg.partition(), msg.offset())] = msg.value()  # type: ignore[attr-defined]
        else:
            errors.append(err)

    producer = Producer(
        {**remote, "acks": "1", "linger.ms": 2, "request.timeout.ms": 1500, "message.timeout.ms": 60000}
    )
    done = threading.Event()

    def load() -> None:
        for i in range(RECORDS):
            while True:
                try:
                    producer.produce(
                        TOPIC, f"r{i}".encode(), partition=i % PARTITIONS, on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.01)
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush(90)
        done.set()

    thread = threading.Thread(target=load)
    thread.start()
    pid = 0
    for k in range(kills):
        pid = _router_pid(broker, not_pid=pid)  # the first one, or the one the supervisor restarted
        if k == 0:  # once some records are acked and most are still to come (a remote producer is fast)
            deadline = time.monotonic() + 60
            while len(acked) < RECORDS // 8 and time.monotonic() < deadline:
                time.sleep(0.001)
        # A later kill hits the restarted router at once, while clients are still reconnecting.
        assert not done.is_set(), "the load finished before the kill: the test would prove nothing"
        os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert done.is_set(), "the producer did not finish"
    assert errors == []
    assert len(acked) == RECORDS
    assert _router_pid(broker, not_pid=pid) != pid  # restarted

    # Read everything back through the (new) router: every acked record at its offset, once.
    consumer = Consumer({**remote, "fetch.max.wait.ms": 100})
    try:
        seen: dict[tuple[int, int], bytes] = {}
        for p in range(PARTITIONS):
            _low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
            consumer.assign([TopicPartition(TOPIC, p, 0)])
            deadline = time.monotonic() + 30
            while len([k for k in seen if k[0] == p]) < high and time.monotonic() < deadline:
                for msg in consumer.consume(10_000, timeout=0.5):
                    assert msg.error() is None
                    seen[(p, msg.offset())] = msg.value()  # type: ignore[assignment]
            assert sorted(o for q, o in seen if q == p) == list(range(high))  # dense
    finally:
        consumer.close()
    lost = [k for k, v in acked.items() if seen.get(k) != v]
    assert lost == []
    values = list(seen.values())
    assert len(values) == len(set(values)) == RECORDS  # idempotent retries: nothing stored twice
