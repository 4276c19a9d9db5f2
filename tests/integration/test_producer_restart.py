"""A local producer across a whole broker restart (supervisor and workers, SIGTERM or SIGKILL).

Its lane dies with the old broker. Once the new broker answers, the producer takes a new lane with
the same producer id and resends every unanswered batch as it was; the new worker answers those its
predecessor appended with their original offsets (deduplicated from the log's tail) and appends the
rest once. Counted: every record reported delivered, none lost, none twice, offsets dense, each
delivery report's offset the record's stored offset.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from shmbroker import KafkaError, Producer
from tests.integration.broker_fixture import BrokerProcess, remove_registered_shm
from tests.integration.test_broker import create, read_all

BEFORE, DURING, AFTER = 2000, 600, 400
RESUME_LIMIT_S = 10.0  # restart to every record delivered: LANE_CHECK_S + a lane, not message.timeout.ms


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_local_producer_resends_across_a_broker_restart(tmp_path: Path, free_port: int, sig: int) -> None:
    brokers = [BrokerProcess(tmp_path / "data", free_port).start()]  # every one stopped at the end
    try:
        run_across_restart(brokers, tmp_path, free_port, sig)
    finally:
        for broker in brokers:
            broker.stop()
        remove_registered_shm(tmp_path / "data")


def run_across_restart(brokers: list[BrokerProcess], tmp_path: Path, free_port: int, sig: int) -> None:
    broker = brokers[0]
    reports: dict[bytes, tuple[int, int | None]] = {}  # value -> (offset, error code or None)

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        reports[msg.value()] = (msg.offset(), None if err is None else err.code())

    producer = Producer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": "shm", "linger.ms": 2,
         "batch.num.messages": 50, "message.timeout.ms": 60000}
    )  # fmt: skip
    values = [b"r%06d" % i for i in range(BEFORE + DURING + AFTER)]
    try:
        create(broker, "bounce")
        for v in values[:BEFORE]:
            producer.produce("bounce", v, partition=0, on_delivery=on_delivery)
        assert producer.flush(10) == 0
        for v in values[BEFORE : BEFORE + DURING]:  # in flight or queued when the broker goes
            producer.produce("bounce", v, partition=0, on_delivery=on_delivery)
        producer.poll(0)
        broker.stop(sig)
        for v in values[BEFORE + DURING :]:  # into the dead lane
            producer.produce("bounce", v, partition=0, on_delivery=on_delivery)
        t0 = time.monotonic()
        producer.poll(1.5)  # the producer looks (LANE_CHECK_S) while no broker answers
        assert time.monotonic() - t0 < 3.0, "poll() was held by the missing broker"
        broker = BrokerProcess(tmp_path / "data", free_port).start()
        brokers.append(broker)
        t0 = time.monotonic()
        assert producer.flush(30) == 0
        resumed_s = time.monotonic() - t0
    finally:
        producer.close(5)
    assert len(reports) == len(values)
    failed = {v: r for v, r in reports.items() if r[1] is not None}
    assert not failed, list(failed.items())[:5]
    assert resumed_s < RESUME_LIMIT_S, f"{resumed_s:.1f} s"
    stored = read_all(broker, "bounce", [0], len(values), transport="shm")
    assert [m.offset() for m in stored] == list(range(len(stored))), "offsets not dense"
    stored_values = [m.value() for m in stored]
    assert len(stored_values) == len(set(stored_values)), "a record stored twice"
    assert stored_values == values, "lost, foreign or reordered records"
    assert {m.value(): m.offset() for m in stored} == {v: r[0] for v, r in reports.items()}


ROUNDS, PER_ROUND = 3, 40_000


def test_local_producer_under_load_across_repeated_broker_kills(tmp_path: Path, free_port: int) -> None:
    """One producer keeps producing while the broker is SIGKILLed ROUNDS times at a random record
    and started again: every record delivered exactly once, in order, at its reported offset."""
    import random

    brokers = [BrokerProcess(tmp_path / "data", free_port).start()]
    reports: dict[bytes, tuple[int, int | None]] = {}

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        reports[msg.value()] = (msg.offset(), None if err is None else err.code())

    rng = random.Random(7)
    values = [b"k%07d" % i for i in range(ROUNDS * PER_ROUND)]
    try:
        create(brokers[0], "storm")
        producer = Producer(
            {"bootstrap.servers": brokers[0].address, "shmbroker.transport": "shm", "linger.ms": 5,
             "message.timeout.ms": 60000}
        )  # fmt: skip
        try:
            for r in range(ROUNDS):
                kill_at = r * PER_ROUND + rng.randrange(PER_ROUND // 4, PER_ROUND // 2)
                restart_at = kill_at + PER_ROUND // 4  # these go into the dead lane or wait queued
                for i in range(r * PER_ROUND, (r + 1) * PER_ROUND):
                    deadline = time.monotonic() + 30
                    while True:  # as a confluent-kafka user must: a full queue is served, then retried
                        try:
                            producer.produce("storm", values[i], partition=0, on_delivery=on_delivery)
                            break
                        except BufferError:
                            assert time.monotonic() < deadline, "the queue never drained"
                            producer.poll(0.01)
                    if i % 500 == 0:
                        producer.poll(0)
                    if i == kill_at:
                        brokers[-1].stop(signal.SIGKILL)
                    elif i == restart_at:
                        brokers.append(BrokerProcess(tmp_path / "data", free_port).start())
                # Each round's resend reaches its own broker before the next kill.
                assert producer.flush(30) == 0
        finally:
            producer.close(5)
        failed = {v: rep for v, rep in reports.items() if rep[1] is not None}
        assert len(reports) == len(values) and not failed, list(failed.items())[:5]
        stored = read_all(brokers[-1], "storm", [0], len(values), transport="shm")
        assert [m.offset() for m in stored] == list(range(len(stored))), "offsets not dense"
        assert [m.value() for m in stored] == values, "lost, doubled or reordered records"
        assert all(reports[m.value()][0] == m.offset() for m in stored)
    finally:
        for broker in brokers:
            broker.stop()
        remove_registered_shm(tmp_path / "data")


def test_a_missing_broker_holds_poll_once_per_interval_not_once_per_partition(
    tmp_path: Path, free_port: int
) -> None:
    """With the broker away, each partition with old batches would ask it (0.25 s each): with 8
    partitions that was 2 s of every second inside poll(). One silent answer now stands for all."""
    partitions = 8
    brokers = [BrokerProcess(tmp_path / "data", free_port).start()]
    reports: list[int | None] = []
    try:
        create(brokers[0], "wide", partitions=partitions)
        producer = Producer({"bootstrap.servers": brokers[0].address, "shmbroker.transport": "shm"})
        try:
            for p in range(partitions):  # opens every lane
                producer.produce("wide", b"first", partition=p)
            assert producer.flush(10) == 0
            brokers[0].stop(signal.SIGKILL)
            for p in range(partitions):
                producer.produce("wide", b"second", partition=p, on_delivery=lambda e, m: reports.append(e))
            t0 = time.monotonic()
            producer.poll(4.0)  # a few check intervals; one wait per interval adds <= 0.25 s
            held_s = time.monotonic() - t0
            assert held_s < 4.6, f"poll(4.0) took {held_s:.2f} s"  # once per partition: >= 5 s
            brokers.append(BrokerProcess(tmp_path / "data", free_port).start())
            assert producer.flush(20) == 0
        finally:
            producer.close(5)
        assert reports == [None] * partitions
    finally:
        for broker in brokers:
            broker.stop()
        remove_registered_shm(tmp_path / "data")
