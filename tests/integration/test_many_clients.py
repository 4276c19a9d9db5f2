"""Many remote clients at once: 8 producer processes and 2 consumer processes over ZeroMQ on one
4-partition topic. Every acknowledged record is read back once; offsets stay dense per partition."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import pytest

from shmbroker import AdminClient, Consumer, NewTopic, Producer, TopicPartition
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration

PRODUCERS, RECORDS_EACH, PARTITIONS = 8, 2000, 4


def produce(address: str, index: int, out: Any) -> None:
    acked: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": address, "shmbroker.transport": "zmq", "linger.ms": 2})
    for i in range(RECORDS_EACH):
        producer.produce(
            "many", f"{index}:{i}".encode(), key=f"{index}-{i}".encode(),
            on_delivery=lambda err, msg: acked.append((msg.partition(), msg.offset())) if err is None else None,
        )  # fmt: skip
        if i % 200 == 0:
            producer.poll(0)
    left = producer.flush(60)
    producer.close()
    out.put((index, len(acked), left))


def consume(address: str, partitions: list[int], expect: int, out: Any) -> None:
    consumer = Consumer({"bootstrap.servers": address, "shmbroker.transport": "zmq"})
    consumer.assign([TopicPartition("many", p, 0) for p in partitions])
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + 90
    while len(got) < expect and time.monotonic() < deadline:
        got.extend((m.partition(), m.offset(), m.value()) for m in consumer.consume(1000, timeout=0.5))
    consumer.close()
    out.put(got)


def test_many_concurrent_remote_clients(broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic("many", PARTITIONS)])["many"].result()
    admin.close()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    producers = [ctx.Process(target=produce, args=(broker.address, i, results)) for i in range(PRODUCERS)]
    for p in producers:
        p.start()
    reports = [results.get(timeout=120) for _ in producers]
    for p in producers:
        p.join(10)
    assert all(left == 0 and n == RECORDS_EACH for _i, n, left in reports), reports
    total = PRODUCERS * RECORDS_EACH
    consumed = ctx.Queue()
    halves = [[0, 1], [2, 3]]
    consumer_admin = Consumer({"bootstrap.servers": broker.address})
    expect = [
        sum(consumer_admin.get_watermark_offsets(TopicPartition("many", p))[1] for p in h) for h in halves
    ]
    consumer_admin.close()
    assert sum(expect) == total
    consumers = [
        ctx.Process(target=consume, args=(broker.address, h, e, consumed))
        for h, e in zip(halves, expect, strict=True)
    ]
    for c in consumers:
        c.start()
    got = [row for _ in consumers for row in consumed.get(timeout=120)]
    for c in consumers:
        c.join(10)
    assert len(got) == total
    assert len({value for _p, _o, value in got}) == total  # every record once
    for p in range(PARTITIONS):
        offsets = sorted(o for part, o, _v in got if part == p)
        assert offsets == list(range(len(offsets)))  # dense
