"""The broker end to end: real supervisor, workers, shared-memory lanes, ZeroMQ, files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shmbroker import AdminClient, Consumer, KafkaError, KafkaException, NewTopic, Producer, TopicPartition
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration

TRANSPORTS = ["shm", "zmq"]


def create(broker: BrokerProcess, topic: str, partitions: int = 1, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, config=config)])[topic].result()
    finally:
        admin.close()


def read_all(
    broker: BrokerProcess,
    topic: str,
    partitions: list[int],
    expect: int,
    *,
    transport: str = "auto",
    timeout_s: float = 30.0,
) -> list:
    consumer = Consumer({"bootstrap.servers": broker.address, "shmbroker.transport": transport})
    consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            out.extend(consumer.consume(10000, timeout=0.5))
        # Nothing more may arrive than was produced.
        out.extend(consumer.consume(10000, timeout=0.2))
    finally:
        consumer.close()
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("size_bytes", "codec"),
    [
        (1, "none"),
        (100, "none"),
        (100, "lz4"),
        (1024, "zstd"),
        (1024, "snappy"),
        (1024, "gzip"),
        (65536, "none"),
    ],
)
def test_round_trip_sizes_and_codecs(
    broker: BrokerProcess, transport: str, size_bytes: int, codec: str
) -> None:
    create(broker, "rt")
    n = 2000 if size_bytes < 65536 else 200
    delivered: list = []
    producer = Producer(
        {
            "bootstrap.servers": broker.address,
            "compression.type": codec,
            "shmbroker.transport": transport,
            "linger.ms": 1,
        }
    )
    values = [os.urandom(size_bytes) for _ in range(n)]
    for i, v in enumerate(values):
        producer.produce(
            "rt",
            v,
            key=str(i).encode(),
            partition=0,
            headers=[("i", str(i).encode())] if i % 7 == 0 else None,
            on_delivery=lambda err, msg: delivered.append((err, msg.offset())),
        )
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    producer.close()
    assert [e for e, _o in delivered if e is not None] == []
    assert sorted(o for _e, o in delivered) == list(range(n))
    got = read_all(broker, "rt", [0], n, transport=transport)
    assert [m.offset() for m in got] == list(range(n))
    assert [m.value() for m in got] == values
    assert [m.key() for m in got] == [str(i).encode() for i in range(n)]
    assert got[7].headers() == [("i", b"7")]
    assert got[1].headers() is None
    assert all(m.error() is None and m.topic() == "rt" and m.partition() == 0 for m in got)


def test_keyed_records_land_where_kafka_would_put_them(broker: BrokerProcess) -> None:
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:  # the two questions kafka-python's partitioner asks of its cluster metadata
        def topics(self) -> set[str]:
            return {"keyed"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(6))

        available_partitions_for_topic = partitions_for_topic

    create(broker, "keyed", partitions=6)
    producer = Producer({"bootstrap.servers": broker.address})
    keys = [f"user-{i}".encode() for i in range(300)]
    for k in keys:
        producer.produce("keyed", b"v", key=k)
    assert producer.flush(30) == 0
    producer.close()
    got = read_all(broker, "keyed", list(range(6)), len(keys))
    assert len(got) == len(keys)
    kafka_python = DefaultPartitioner()
    for m in got:
        assert m.partition() == kafka_python.partition("keyed", m.key(), m.key(), b"v", b"v", Cluster())


def test_batch_api_and_columnar_consume(broker: BrokerProcess) -> None:
    create(broker, "cols")
    rows = np.random.default_rng(1).integers(0, 256, size=(50_000, 100), dtype=np.uint8)
    outcomes: list = []
    producer = Producer({"bootstrap.servers": broker.address})
    assert producer.produce_batch(
        "cols", rows, partition=0, on_delivery=lambda *a: outcomes.append(a)
    ) == len(rows)
    assert producer.flush(30) == 0
    producer.close()
    assert all(err is None for err, *_ in outcomes)
    assert sum(o[4] for o in outcomes) == len(rows)
    consumer = Consumer({"bootstrap.servers": broker.address})
    consumer.assign([TopicPartition("cols", 0, -2)])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < len(rows) and time.monotonic() < deadline:
        for _topic, _p, batch in consumer.consume_columnar(timeout=0.5):
            assert batch.offsets[0] == seen
            assert batch.value_rows() is not None
            assert np.array_equal(batch.value_rows(), rows[seen : seen + len(batch)])
            seen += len(batch)
    consumer.close()
    assert seen == len(rows)


def test_watermarks_seek_and_offsets_for_times(broker: BrokerProcess) -> None:
    create(broker, "wm")
    producer = Producer({"bootstrap.servers": broker.address})
    base_ms = 1_700_000_000_000
    for i in range(10):
        producer.produce("wm", f"{i}".encode(), partition=0, timestamp=base_ms + i * 1000)
        producer.flush(10)  # one batch per record, so lookups by time are per record
    producer.close()
    consumer = Consumer({"bootstrap.servers": broker.address})
    tp = TopicPartition("wm", 0)
    assert consumer.get_watermark_offsets(tp) == (0, 10)
    [found] = consumer.offsets_for_times([TopicPartition("wm", 0, base_ms + 4500)])
    assert found.offset == 5
    consumer.assign([TopicPartition("wm", 0, 7)])
    assert [m.value() for m in consumer.consume(10, timeout=5)] == [b"7", b"8", b"9"]
    assert consumer.position([tp])[0].offset == 10
    consumer.seek(TopicPartition("wm", 0, 2))
    assert consumer.poll(5).offset() == 2
    consumer.close()


def test_watermarks_of_an_assigned_local_partition_come_from_its_control_block(broker: BrokerProcess) -> None:
    """Assigned through shared memory, get_watermark_offsets reads what the broker would answer from
    the control block, without a request: the values follow appends, match the broker's own answer,
    and the supervisor counts no LIST_OFFSETS for them."""
    create(broker, "wm-local", partitions=2)
    producer = Producer({"bootstrap.servers": broker.address, "shmbroker.transport": "shm"})
    local = Consumer({"bootstrap.servers": broker.address, "shmbroker.transport": "shm"})
    asking = Consumer({"bootstrap.servers": broker.address, "shmbroker.transport": "zmq"})
    local.assign([TopicPartition("wm-local", 0, -1)])
    tp0, tp1 = TopicPartition("wm-local", 0), TopicPartition("wm-local", 1)
    try:
        for n in (1, 5, 25):
            for i in range(n):
                producer.produce("wm-local", b"%d" % i, partition=0)
            assert producer.flush(10) == 0
            assert local.get_watermark_offsets(tp0) == asking.get_watermark_offsets(tp0)
        assert local.get_watermark_offsets(tp0) == (0, 31)
        before = _list_offsets_requests(broker)
        for _ in range(50):
            assert local.get_watermark_offsets(tp0) == (0, 31)
        assert _list_offsets_requests(broker) == before
        assert local.get_watermark_offsets(tp1) == (0, 0)  # not assigned: the broker answers
        assert _list_offsets_requests(broker) > before
    finally:
        local.close()
        asking.close()
        producer.close()


def _list_offsets_requests(broker: BrokerProcess) -> int:
    """LIST_OFFSETS requests the supervisor has answered so far (``shmbroker status --json``)."""
    return int(broker.status()["counters"].get("requests.LIST_OFFSETS", 0))


def test_bad_input_gets_typed_errors_and_the_broker_keeps_serving(broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    for name in ["..", "a/b", "x" * 250, "nul\x00", ""]:
        futures = admin.create_topics([NewTopic(name, 1)])
        with pytest.raises(KafkaException) as info:
            next(iter(futures.values())).result()
        assert info.value.args[0].code() == KafkaError.TOPIC_EXCEPTION
    # Nothing was created for the refused names: only the broker's own files are there.
    assert set(os.listdir(broker.data_dir)) <= {
        ".lock",
        ".shm-registry",
        ".runtime-dir",
        "topics.json",
        "__consumer_offsets",
    }
    with pytest.raises(KafkaException):
        admin.create_topics([NewTopic("ok", 0)])["ok"].result()
    create(broker, "ok")
    with pytest.raises(KafkaException) as info:
        admin.create_topics([NewTopic("ok", 1)])["ok"].result()
    assert info.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    admin.close()
    producer = Producer({"bootstrap.servers": broker.address, "allow.auto.create.topics": "false"})
    with pytest.raises(KafkaException) as info:
        producer.produce("missing", b"x")
    assert info.value.args[0].code() == KafkaError._UNKNOWN_TOPIC
    with pytest.raises(KafkaException) as info:
        producer.produce("ok", b"x", partition=3)
    assert info.value.args[0].code() == KafkaError._UNKNOWN_PARTITION
    with pytest.raises(KafkaException) as info:
        producer.produce("ok", b"x" * 2_000_000, partition=0)
    assert info.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    producer.produce("ok", b"fine", partition=0)
    assert producer.flush(10) == 0
    producer.close()
    assert [m.value() for m in read_all(broker, "ok", [0], 1)] == [b"fine"]


def test_corrupt_batch_in_a_lane_is_refused_and_counted(broker: BrokerProcess) -> None:
    """A producer that writes a batch with a bad CRC into its lane gets CORRUPT_MESSAGE back."""
    from shmbroker import records
    from shmbroker.client.config import CommonConfig
    from shmbroker.client.transport import TransportFactory

    create(broker, "crc")
    factory = TransportFactory(CommonConfig(broker.address, "shm", 5000))
    lane = factory.open("crc", 0)
    builder = records.BatchBuilder()
    builder.append(b"good")
    good = builder.build(producer_id=lane.producer_id, base_sequence=0)
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    bad[53:57] = (1).to_bytes(4, "big")  # the next sequence; the CRC is now wrong twice over
    forged = records.BatchBuilder()
    forged.append(b"forged")
    alien = forged.build(producer_id=lane.producer_id + 999, base_sequence=2)
    for batch in (good, bad, alien):
        assert lane.try_send(batch, lane.reserve(), acks=1)
    done: list = []
    deadline = time.monotonic() + 10
    while len(done) < 3 and time.monotonic() < deadline:
        done += lane.poll_completions()
        time.sleep(0.01)
    factory.close()
    by_sequence = {s: (off, err) for s, off, err, _append_time_ms in done}
    assert by_sequence[0] == (0, None)
    assert by_sequence[1][1].code() == KafkaError.CORRUPT_MESSAGE
    assert by_sequence[2][1].code() == KafkaError.INVALID_RECORD
    admin = AdminClient({"bootstrap.servers": broker.address})
    [row] = [r for r in admin.status()["partitions"] if r["topic"] == "crc"]
    admin.close()
    assert row["errors"] == 2 and row["log_end_offset"] == 1
    assert [m.value() for m in read_all(broker, "crc", [0], 1)] == [b"good"]


def test_lane_full_gives_buffer_error_and_flush_waits_bounded(broker: BrokerProcess) -> None:
    create(broker, "full")
    worker = broker.worker_pid("full", 0)
    os.kill(worker, signal.SIGSTOP)  # the worker stops draining: the lane fills
    try:
        producer = Producer(
            {"bootstrap.servers": broker.address, "queue.buffering.max.messages": 20000, "linger.ms": 0}
        )

        def fill() -> None:
            for _ in range(100_000):
                producer.produce("full", b"x" * 100, partition=0)

        with pytest.raises(BufferError):
            fill()
        started = time.monotonic()
        left = producer.flush(0.5)
        assert left > 0
        assert time.monotonic() - started < 2.0
    finally:
        os.kill(worker, signal.SIGCONT)
    assert producer.flush(30) == 0
    producer.close()


def test_sigkilled_worker_loses_no_acked_record(broker: BrokerProcess) -> None:
    """Kill the partition worker repeatedly under load: every acked record is read back, offsets dense."""
    create(broker, "kill")
    acked: dict[int, bytes] = {}
    failed = 0
    reasons: set[str] = set()

    def on_delivery(err: KafkaError | None, msg) -> None:
        nonlocal failed
        if err is None:
            acked[msg.offset()] = msg.value()
        else:
            failed += 1
            reasons.add(err.str())

    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 1, "message.timeout.ms": 20000})
    sent = 0
    kills = 0
    deadline = time.monotonic() + 60
    next_kill = time.monotonic() + 0.3
    while kills < 3 and time.monotonic() < deadline:
        try:
            producer.produce("kill", sent.to_bytes(8, "big"), partition=0, on_delivery=on_delivery)
            sent += 1
        except BufferError:
            producer.poll(0.01)
        if sent % 1000 == 0:
            producer.poll(0)
        if time.monotonic() >= next_kill:
            os.kill(broker.worker_pid("kill", 0), signal.SIGKILL)
            kills += 1
            next_kill = time.monotonic() + 1.0
    assert producer.flush(40) == 0
    producer.close()
    assert kills == 3
    consumer = Consumer({"bootstrap.servers": broker.address})
    _low, high = consumer.get_watermark_offsets(TopicPartition("kill", 0))
    consumer.close()
    got = read_all(broker, "kill", [0], high)  # everything stored, acked or not
    offsets = [m.offset() for m in got]
    assert offsets == list(range(len(got))), "offsets must be dense"
    stored = {m.offset(): m.value() for m in got}
    lost = [o for o, v in acked.items() if stored.get(o) != v]
    assert lost == [], f"{len(lost)} acked records lost"
    # Unacked records were appended at most once: no value appears twice.
    values = [m.value() for m in got]
    assert len(values) == len(set(values))
    assert len(acked) + failed == sent
    # A record reported failed must not be stored either (else a retry would duplicate it).
    assert len(got) == len(acked), (
        f"{len(got) - len(acked)} records stored but reported failed ({failed} failed: {reasons})"
    )


def test_producer_killed_mid_write_wedges_nobody(broker: BrokerProcess, tmp_path: Path) -> None:
    create(broker, "victim")
    script = tmp_path / "producer.py"
    script.write_text(
        "import sys\n"
        "from shmbroker import Producer\n"
        f"p = Producer({{'bootstrap.servers': '{broker.address}', 'linger.ms': 0}})\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        p.produce('victim', b'x' * 1000, partition=0)\n"
        "    except BufferError:\n"
        "        p.poll(0.001)\n"
        "    p.poll(0)\n"
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        child.kill()
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
    producer = Producer({"bootstrap.servers": broker.address})
    producer.produce("victim", b"after", partition=0)
    assert producer.flush(10) == 0
    producer.close()
    consumer = Consumer({"bootstrap.servers": broker.address})
    _low, high = consumer.get_watermark_offsets(TopicPartition("victim", 0))
    consumer.assign([TopicPartition("victim", 0, high - 1)])
    assert consumer.poll(5).value() == b"after"
    consumer.close()
    # The dead producer's lane is reclaimed by the supervisor.
    admin = AdminClient({"bootstrap.servers": broker.address})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [row] = [r for r in admin.status()["partitions"] if r["topic"] == "victim"]
        if row["lanes"] == 0:
            break
        time.sleep(0.2)
    admin.close()
    assert row["lanes"] == 0


def test_clean_shutdown_removes_every_shm_block_and_blocks_are_private(
    tmp_path: Path, free_port: int
) -> None:
    broker = BrokerProcess(tmp_path / "data", free_port).start()
    try:
        create(broker, "s", partitions=3)
        producer = Producer({"bootstrap.servers": broker.address})
        producer.produce("s", b"x", partition=1)
        producer.flush(10)
        names = (broker.data_dir / ".shm-registry").read_text().split()
        assert len(names) >= 4  # 3 control blocks and the producer's lane
        for name in names:
            st = os.stat(f"/dev/shm{name}")
            assert stat.S_IMODE(st.st_mode) == 0o600
        producer.close()
    finally:
        assert broker.stop() == 0
    left = [n for n in names if os.path.exists(f"/dev/shm{n}") or os.path.exists(f"/dev/shm/sem.{n[1:]}")]
    assert left == []
    assert "stopped cleanly" in "".join(broker.output)
    for p in range(3):
        assert (broker.data_dir / f"s-{p}" / ".clean_shutdown").exists()


def test_second_broker_on_the_same_data_dir_refuses(broker: BrokerProcess, free_port: int) -> None:
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmbroker",
            "serve",
            "--data-dir",
            str(broker.data_dir),
            "--listen",
            f"tcp://127.0.0.1:{free_port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "in use by another broker" in second.stderr


def test_restart_keeps_data_and_stale_shm_of_a_killed_broker_is_removed(
    tmp_path: Path, free_port: int
) -> None:
    broker = BrokerProcess(tmp_path / "data", free_port).start()
    create(broker, "keep")
    producer = Producer({"bootstrap.servers": broker.address})
    for i in range(100):
        producer.produce("keep", str(i).encode(), partition=0)
    assert producer.flush(10) == 0
    producer.close()
    names = (broker.data_dir / ".shm-registry").read_text().split()
    broker.stop(signal.SIGKILL)
    broker = BrokerProcess(tmp_path / "data", free_port).start()
    try:
        assert not [n for n in names if os.path.exists(f"/dev/shm{n}")]
        got = read_all(broker, "keep", [0], 100)
        assert [m.value() for m in got] == [str(i).encode() for i in range(100)]
    finally:
        broker.stop()


def test_sixteen_partitions_ready_fast(tmp_path: Path, free_port: int) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(data, free_port).start()
    create(broker, "wide", partitions=16)
    broker.stop()
    started = time.monotonic()
    broker = BrokerProcess(data, free_port).start()
    try:
        elapsed_s = time.monotonic() - started
        assert "16 partitions" in broker.ready_line
        # Generous for CI on a loaded 2-core machine; perf/ measures the real figure.
        assert elapsed_s < 10
        assert len([c for c in broker.children() if "partition wide-" in " ".join(c.cmdline())]) == 16
    finally:
        broker.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_every_acks_level_delivers(broker: BrokerProcess, transport: str, acks: str) -> None:
    create(broker, "acks")
    results: list = []
    producer = Producer(
        {"bootstrap.servers": broker.address, "acks": acks, "shmbroker.transport": transport, "linger.ms": 2}
    )
    for i in range(500):
        producer.produce(
            "acks", str(i).encode(), partition=0, on_delivery=lambda e, m: results.append((e, m.offset()))
        )
    # poll() alone must seal lingering batches and deliver them (no flush).
    deadline = time.monotonic() + 20
    while len(results) < 500 and time.monotonic() < deadline:
        producer.poll(0.05)
    assert len(results) == 500 and all(e is None for e, _o in results)
    if acks == "0":
        assert {o for _e, o in results} == {-1001}  # the offset of an acks=0 record is unknown
    else:
        assert sorted(o for _e, o in results) == list(range(500))
    producer.close()
    assert [m.value() for m in read_all(broker, "acks", [0], 500)] == [str(i).encode() for i in range(500)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_delivery_reports_match_records_when_callbacks_come_and_go_within_a_batch(
    broker: BrokerProcess, transport: str
) -> None:
    """Records with and without a callback, in any order, share batches (produce()'s fast path takes
    both): each callback gets its own record's value and offset, none is skipped or repeated."""
    create(broker, "mixed")
    reports: list = []
    producer = Producer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": transport, "linger.ms": 50}
    )
    pattern = [True, False, False, True, True, False]  # starts with, ends without, runs of both
    want = []
    for i in range(600):
        value = str(i).encode()
        if pattern[i % len(pattern)] != (i % 97 == 0):  # some irregularity across batch boundaries
            producer.produce("mixed", value, partition=0, on_delivery=lambda e, m: reports.append((e, m)))
            want.append(i)
        else:
            producer.produce("mixed", value, partition=0)
    assert producer.flush(20) == 0
    assert all(e is None for e, _m in reports)
    assert [(m.value(), m.offset()) for _e, m in reports] == [(str(i).encode(), i) for i in want]
    producer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_records_interleaved_over_partitions_and_topics_land_where_they_were_sent(
    broker: BrokerProcess, transport: str
) -> None:
    """produce()'s fast path remembers the partition it last filled: switching partition or topic
    every few records (and naming a topic with an equal but distinct string) must never put a record
    in the batch of the partition before."""
    create(broker, "inter-a", partitions=3)
    create(broker, "inter-b", partitions=2)
    producer = Producer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": transport, "linger.ms": 20}
    )
    want: dict[tuple[str, int], list[bytes]] = {}
    for i in range(900):
        topic = "inter-a" if (i // 3) % 2 == 0 else "".join(["inter-", "b"])  # not always the same object
        partition = (i // 5) % (3 if topic == "inter-a" else 2)
        value = f"{topic}/{partition}/{i}".encode()
        producer.produce(topic, value, partition=partition)
        want.setdefault((topic, partition), []).append(value)
    assert producer.flush(20) == 0
    producer.close()
    for (topic, partition), values in want.items():
        assert [m.value() for m in read_all(broker, topic, [partition], len(values))] == values


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_record_produced_after_a_pause_is_sent_by_the_next_poll(
    broker: BrokerProcess, transport: str
) -> None:
    """Natural batching holds a lingering batch while one is unanswered. An answer that arrived while
    the caller slept must free that slot in the same poll(): the record produced after the pause is
    sent then, not one poll (one more pause) later."""
    create(broker, "pause")
    producer = Producer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": transport, "linger.ms": 0}
    )
    watcher = Consumer({"bootstrap.servers": broker.address})
    tp = TopicPartition("pause", 0)
    try:
        for i in range(3):
            producer.produce("pause", b"before the pause %d" % i, partition=0)
            producer.poll(0)  # sent; its answer comes while we sleep
            time.sleep(0.3)
            producer.produce("pause", b"after the pause %d" % i, partition=0)
            producer.poll(0)  # collects the answer, then must send this record: no poll() after it
            deadline = time.monotonic() + 5
            high = 0
            while high < 2 * (i + 1) and time.monotonic() < deadline:
                high = watcher.get_watermark_offsets(tp)[1]
                time.sleep(0.01)
            assert high == 2 * (i + 1), f"round {i}: the broker has {high} records; the last was never sent"
        assert producer.flush(10) == 0
    finally:
        watcher.close()
        producer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_delivery_reports_carry_the_timestamps_the_records_were_stored_with(
    broker: BrokerProcess, transport: str
) -> None:
    """confluent-kafka's delivery report says the record's timestamp: the one given, else the one the
    client stamped. Plain records (produce()'s fast path), keyed ones (the batch builder), explicit
    timestamps and big values (built in the lane frame locally) each report what a consumer reads."""
    create(broker, "stamps")
    producer = Producer(
        {"bootstrap.servers": broker.address, "shmbroker.transport": transport, "linger.ms": 20}
    )
    reported: dict[int, tuple[int, int]] = {}

    def report(err: object, msg: object) -> None:
        assert err is None
        reported[msg.offset()] = msg.timestamp()  # type: ignore[attr-defined]

    before_ms = int(time.time() * 1000)
    for i in range(20):
        producer.produce("stamps", b"plain %d" % i, partition=0, on_delivery=report)
    assert producer.flush(10) == 0
    for i in range(10):
        key = b"k%d" % i if i % 2 else None
        producer.produce("stamps", b"mixed %d" % i, key=key, partition=0, on_delivery=report)
    producer.produce("stamps", b"given", partition=0, timestamp=1_600_000_000_000, on_delivery=report)
    assert producer.flush(10) == 0
    for _ in range(4):
        producer.produce("stamps", os.urandom(8192), partition=0, on_delivery=report)
    assert producer.flush(10) == 0
    after_ms = int(time.time() * 1000)
    producer.close()
    stored = {m.offset(): m.timestamp() for m in read_all(broker, "stamps", [0], 35)}
    assert len(stored) == 35 and reported == stored
    assert stored[30] == (1, 1_600_000_000_000)
    assert all(before_ms <= ts <= after_ms for kind, ts in (v for k, v in stored.items() if k != 30))
    assert all(kind == 1 for kind, _ts in stored.values())  # CreateTime


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_delivery_reports_of_a_log_append_time_topic_carry_the_brokers_time(
    broker: BrokerProcess, transport: str
) -> None:
    """With message.timestamp.type=LogAppendTime the broker replaces every record's timestamp with its
    own clock at the append; the delivery report says that one (LOG_APPEND_TIME), as Kafka's does."""
    create(broker, "appended", **{"message.timestamp.type": "LogAppendTime"})
    producer = Producer({"bootstrap.servers": broker.address, "shmbroker.transport": transport})
    reported: dict[int, tuple[int, int]] = {}

    def report(err: object, msg: object) -> None:
        assert err is None
        reported[msg.offset()] = msg.timestamp()  # type: ignore[attr-defined]

    for i in range(6):
        stamp = 1_600_000_000_000 if i % 2 else 0  # a given timestamp is replaced as well
        producer.produce("appended", b"%d" % i, partition=0, timestamp=stamp, on_delivery=report)
        assert producer.flush(10) == 0
    producer.close()
    stored = {m.offset(): m.timestamp() for m in read_all(broker, "appended", [0], 6)}
    assert len(stored) == 6 and reported == stored
    assert all(kind == 2 and ts > 1_700_000_000_000 for kind, ts in stored.values())


def test_hostile_lane_cursor_drops_that_lane_only(broker: BrokerProcess) -> None:
    """A producer that writes an impossible write position into its lane loses its lane, nothing else."""
    import struct

    from shmbroker.client.config import CommonConfig
    from shmbroker.client.transport import TransportFactory
    from shmbroker.ring.block import SharedBlock
    from shmbroker.ring.lane import REQUEST_RING_OFFSET
    from shmbroker.ring.layout import WRITE_POSITION_OFFSET

    create(broker, "hostile")
    factory = TransportFactory(CommonConfig(broker.address, "shm", 5000))
    lane = factory.open("hostile", 0)
    block = SharedBlock.attach(lane.lane_name)
    struct.pack_into("<Q", block.view, REQUEST_RING_OFFSET + WRITE_POSITION_OFFSET, 2**62 + 3)
    block.close()
    admin = AdminClient({"bootstrap.servers": broker.address})
    deadline = time.monotonic() + 10
    row: dict = {}
    while time.monotonic() < deadline:
        [row] = [r for r in admin.status()["partitions"] if r["topic"] == "hostile"]
        if row["errors"] >= 1:
            break
        time.sleep(0.1)
    assert row["errors"] >= 1 and row["state"] == "READY"
    factory.close()
    producer = Producer({"bootstrap.servers": broker.address})
    producer.produce("hostile", b"still serving", partition=0)
    assert producer.flush(10) == 0
    producer.close()
    admin.close()
    assert [m.value() for m in read_all(broker, "hostile", [0], 1)] == [b"still serving"]


def test_crash_loop_gives_up_on_that_partition_only(broker: BrokerProcess) -> None:
    create(broker, "loop", partitions=2)
    admin = AdminClient({"bootstrap.servers": broker.address})
    killed: set[int] = set()
    deadline = time.monotonic() + 60
    failed = None
    while time.monotonic() < deadline and failed is None:
        rows = {r["partition"]: r for r in admin.status(timeout=10)["partitions"] if r["topic"] == "loop"}
        failed = rows[0]["failed"]
        pid = rows[0]["pid"]
        if failed is None and pid and pid not in killed and rows[0]["state"] == "READY":
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    admin.close()
    assert failed is not None and "not restarting" in failed, failed
    assert len(killed) >= 6
    producer = Producer({"bootstrap.servers": broker.address})
    producer.produce("loop", b"other partition", partition=1)
    assert producer.flush(10) == 0
    producer.close()
    assert "crashed" in "".join(broker.output)


def test_the_producer_counts_the_delivery_reports_it_waits_for(broker: BrokerProcess) -> None:
    """poll()/flush() spin for reports (shmbroker.poll.spin.us) only while a callback waits: the count
    behind that rule must come back to 0 whichever way the records went in."""
    create(broker, "reports")
    reports: list[object] = []
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 50})
    producer.produce("reports", b"slow path", partition=0, on_delivery=lambda err, msg: reports.append(msg))
    for i in range(5):  # the open batch has room: produce()'s fast path
        producer.produce(
            "reports", b"fast %d" % i, partition=0, on_delivery=lambda err, msg: reports.append(msg)
        )
    producer.produce("reports", b"no callback", partition=0)
    producer.produce_batch(
        "reports", [b"a", b"b"], partition=0, on_delivery=lambda *batch: reports.append(batch)
    )
    producer.produce_batch("reports", [b"c"], partition=0)
    assert producer._reports_waiting == 7  # six records with a callback, one batch with one
    assert producer.flush(10) == 0
    assert len(reports) == 7 and producer._reports_waiting == 0
    producer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_poll_blocks_for_its_timeout_when_nothing_is_undelivered(
    broker: BrokerProcess, transport: str
) -> None:
    """confluent-kafka's poll(timeout) waits the whole timeout when there is nothing to report: a loop
    of poll(1.0) must not spin. With a report coming it returns as soon as that is served."""
    create(broker, "idle-poll")
    producer = Producer({"bootstrap.servers": broker.address, "shmbroker.transport": transport})
    delivered: list[int] = []
    try:
        producer.produce("idle-poll", b"x", partition=0)
        assert producer.flush(10) == 0  # the lane or connection is up; nothing is undelivered now
        started = time.monotonic()
        assert producer.poll(0.3) == 0
        assert 0.29 <= time.monotonic() - started < 2.0
        started = time.monotonic()
        assert producer.poll(0) == 0
        assert time.monotonic() - started < 0.1
        producer.produce(
            "idle-poll", b"y", partition=0, on_delivery=lambda err, msg: delivered.append(msg.offset())
        )
        started = time.monotonic()
        served = 0
        while not served and time.monotonic() - started < 10:
            served = producer.poll(10)
        assert served == 1 and delivered == [1]
        assert time.monotonic() - started < 5  # returned on the report, not at the timeout
    finally:
        producer.close()
