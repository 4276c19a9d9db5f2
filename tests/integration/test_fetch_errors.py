"""A consumer whose partition's topic was deleted reports UNKNOWN_TOPIC_OR_PART and backs off
(fetch.error.backoff.ms), as librdkafka does: the remote one instead of asking again in a hot loop,
the local one instead of raising FileNotFoundError or saying nothing. One with every partition
paused sleeps instead of spinning."""

from __future__ import annotations

import resource
import signal
import time
from pathlib import Path
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


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_consumers_follow_a_broker_restart(tmp_path: Path, free_port: int, kill: bool) -> None:
    """A restarted broker names new control blocks (local) and answers on a new router (remote):
    an assigned consumer of either kind keeps reading, the local one at once, the remote one after
    its lost FETCH times out (fetch.max.wait.ms + 5 s), not after 30 s."""
    broker = BrokerProcess(tmp_path / "data", free_port).start()
    consumers: dict[str, Consumer] = {}
    try:
        create(broker, "lasting")
        produce_one(broker, "lasting", b"before")
        for transport in ("shm", "zmq"):
            consumer = Consumer({"bootstrap.servers": broker.address, "shmbroker.transport": transport})
            consumer.assign([TopicPartition("lasting", 0, 0)])
            consumers[transport] = consumer
            message = consumer.poll(10)
            # The remote one sent its next FETCH with that reply (prefetch): parked at the router now.
            assert message is not None and message.value() == b"before"
        broker.stop(signal.SIGKILL if kill else signal.SIGTERM)
        broker = BrokerProcess(tmp_path / "data", free_port).start()
        produce_one(broker, "lasting", b"after")
        for transport, limit_s in (("shm", 3.0), ("zmq", 9.0)):
            t0 = time.monotonic()
            message = None
            while message is None and time.monotonic() - t0 < 20:
                message = consumers[transport].poll(0.5)
            waited = time.monotonic() - t0
            assert message is not None, transport
            assert (message.offset(), message.error(), message.value()) == (1, None, b"after"), transport
            assert waited < limit_s, f"{transport}: {waited:.1f} s"
    finally:
        for consumer in consumers.values():
            consumer.close()
        broker.stop()
