"""The live listener under garbage: random multipart messages from several raw sockets, while a
normal client keeps producing and reading back correctly. Bounded in count and time."""

from __future__ import annotations

import random
import time

import pytest
import zmq

from shmbroker import AdminClient, Consumer, NewTopic, Producer, TopicPartition
from shmbroker.net.protocol import HEADER, ApiKey
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration


def random_message(rng: random.Random) -> list[bytes]:
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 5))]
    header = HEADER.pack(1, rng.choice(list(ApiKey)), 0, rng.randrange(2**32))
    if kind == 1:
        return [header, rng.randbytes(rng.randrange(0, 200))]
    if kind == 2:
        return [header, b'{"topic": "t", "partitions": [0], "acks": 1}', rng.randbytes(rng.randrange(0, 300))]
    if kind == 3:
        return [header, b'{"topic": "../../etc", "partition": -1, "offset": "x", "partitions": "nope"}']
    if kind == 4:
        return [header, b'{"partitions": [{"topic": "t", "partition": 0, "offset": -5, "max_bytes": -1}]}']
    return [header, b"[]", b"", b""]


def test_garbage_never_stops_the_broker(broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic("t", 1)])["t"].result()
    context = zmq.Context()
    sockets = []
    for _ in range(4):
        s = context.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(broker.address)
        sockets.append(s)
    rng = random.Random(7)
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 1})
    sent = 0
    deadline = time.monotonic() + 20
    try:
        for round_ in range(40):
            if time.monotonic() > deadline:
                break
            for s in sockets:
                for _ in range(50):
                    s.send_multipart(random_message(rng))
            for _ in range(100):
                producer.produce("t", f"{round_}-{sent}".encode(), partition=0)
                sent += 1
            producer.flush(10)
        assert producer.flush(10) == 0
    finally:
        for s in sockets:
            s.close(0)
        context.term()
        producer.close()
    consumer = Consumer({"bootstrap.servers": broker.address})
    consumer.assign([TopicPartition("t", 0, 0)])
    got: list = []
    end = time.monotonic() + 20
    while len(got) < sent and time.monotonic() < end:
        got.extend(m.value() for m in consumer.consume(1000, timeout=0.5))
    consumer.close()
    assert len(got) == sent  # the garbage batches (random bytes) were all refused: nothing else stored
    status = admin.status()
    admin.close()
    assert status["counters"].get("malformed", 0) > 0
    assert sum(v for k, v in status["counters"].items() if k.startswith("errors.")) > 0
