"""A consumer whose partition's topic was deleted reports UNKNOWN_TOPIC_OR_PART and backs off
(fetch.error.backoff.ms), as librdkafka does: the remote one instead of asking again in a hot loop,
the local one instead of raising FileNotFoundError or saying nothing. One with every partition
paused sleeps instead of spinning."""

from __future__ import annotations

import resource
import time
from typing import Any

import pytest

from shmbroker import AdminClient, Consumer, KafkaError, NewTopic, Producer, TopicPartition
from tests.integration.broker_fixture import BrokerProcess, produce_one
from tests.integration.test_broker import create

pytestmark = pytest.mark.integration


def _fetch_requests(broker: BrokerProcess) -> int:
    return int(broker.status()["counters"].get("requests.FETCH", 0))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("transport", ["shm", "zmq"])
@pytest.mark.parametrize("behind", [True, False], ids=["behind", "caught-up"])
def test_a_deleted_topic_is_reported_at_the_backoff_pace(
    broker: BrokerProcess, transport: str, behind: bool
) -> None:
    create(broker, "doomed")
    produce_one(broker, "doomed", b"one")
    consumer = Consumer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": transport, "fetch.error.backoff.ms": 200}
    )
    try:
        consumer.assign([TopicPartition("doomed", 0, 0)])
        if not behind:
            first = consumer.poll(10)
            assert first is not None and first.value() == b"one"
        admin = AdminClient({"bootstrap.servers": broker.address})
        admin.delete_topics(["doomed"])["doomed"].result()
        admin.close()
        time.sleep(1.5)  # the router's metadata refresh (1 s) learns of it
        before = _fetch_requests(broker)
        errors = []
        t0, cpu0 = time.monotonic(), _cpu_s()
        while time.monotonic() - t0 < 2.0:
            message = consumer.poll(0.3)
            if message is not None:
                assert message.error() is not None, message
                errors.append(message.error().code())
        cpu = _cpu_s() - cpu0
        time.sleep(1.2)  # the router writes its counters once a second
        asked = _fetch_requests(broker) - before
        assert errors and set(errors) == {KafkaError.UNKNOWN_TOPIC_OR_PART}
        # One report (and remotely one FETCH) per 200-ms backoff: about 10 in 2 s; a hot loop asked
        # ~1,400 a second, and the local reader raised FileNotFoundError out of poll().
        assert len(errors) <= 25
        assert asked <= 25, asked
        assert cpu < 0.6, f"{cpu:.2f} s of CPU in 2 s of polling"
    finally:
        consumer.close()


def test_a_remote_consumer_with_every_partition_paused_sleeps(broker: BrokerProcess) -> None:
    create(broker, "resting")
    consumer = Consumer({"bootstrap.servers": broker.address, "shmbroker.transport": "zmq"})
    try:
        consumer.assign([TopicPartition("resting", 0, 0)])
        consumer.pause([TopicPartition("resting", 0)])
        wall0, cpu0 = time.monotonic(), _cpu_s()
        assert consumer.poll(1.0) is None
        wall, cpu = time.monotonic() - wall0, _cpu_s() - cpu0
        assert wall >= 0.9  # it waited its timeout...
        assert cpu < 0.3 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s"  # ...asleep, not in a loop
    finally:
        consumer.close()


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_records_for_a_deleted_topic_fail_fast_and_a_new_topic_of_that_name_takes_records(
    broker: BrokerProcess, transport: str
) -> None:
    """A local lane's worker stops without a word when its topic goes: the producer must not wait
    message.timeout.ms (5 min by default) to say so; the remote path hears it in the reply."""
    create(broker, "phoenix")
    reports: list[Any] = []
    producer = Producer({"bootstrap.servers": broker.address, "shmbroker.transport": transport})
    try:
        producer.produce("phoenix", b"first", partition=0, on_delivery=lambda e, m: reports.append(e))
        assert producer.flush(10) == 0
        admin = AdminClient({"bootstrap.servers": broker.address})
        admin.delete_topics(["phoenix"])["phoenix"].result()
        time.sleep(1.5)  # the router's metadata refresh (1 s) learns of it
        t0 = time.monotonic()
        producer.produce("phoenix", b"lost", partition=0, on_delivery=lambda e, m: reports.append(e))
        assert producer.flush(10) == 0
        assert time.monotonic() - t0 < 5.0
        assert reports[0] is None
        assert [e.code() for e in reports[1:]] == [KafkaError.UNKNOWN_TOPIC_OR_PART]
        admin.create_topics([NewTopic("phoenix", 1)])["phoenix"].result()
        admin.close()
        producer.produce("phoenix", b"again", partition=0, on_delivery=lambda e, m: reports.append(e))
        assert producer.flush(10) == 0
        assert reports[2] is None  # stored: through a new lane to the new topic's worker
    finally:
        producer.close(5)
    consumer = Consumer({"bootstrap.servers": broker.address, "shmbroker.transport": transport})
    try:
        consumer.assign([TopicPartition("phoenix", 0, 0)])
        message = consumer.poll(10)
        assert message is not None and message.error() is None and message.value() == b"again"
    finally:
        consumer.close()
