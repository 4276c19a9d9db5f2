"""Replication between two real brokers on two network namespaces: acks=all, the in-sync set,
min.insync.replicas, promote after the leader's death, and an old leader that returns.

Loss accounting: every record whose delivery callback said success is read back from the broker
that leads afterwards, at the same offset, with the same value (lost must be 0)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmbroker import Consumer, NewTopic, Producer, TopicPartition
from shmbroker.client.types import KafkaError, KafkaException
from tests.integration.replication_fixture import ReplicatedPair, wait_for
from tests.netns import NetnsPair

pytestmark = pytest.mark.integration
SOCKET_TIMEOUT_S_FOR_TESTS = 3.0  # > replica.socket.timeout.ms of the fixture: the follower gives up

TOPIC = "orders"
PARTITIONS = 2


@pytest.fixture
def replicated(tmp_path: Path, netns_pair: NetnsPair) -> Iterator[ReplicatedPair]:
    pair = ReplicatedPair(tmp_path, netns_pair, extra='"min.insync.replicas" = 2\n')
    try:
        pair.start("a")
        pair.start("b")
        admin = pair.admin("a")
        try:
            for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS)]).values():
                future.result()
        finally:
            admin.close()
        for p in range(PARTITIONS):
            wait_for(f"follower in sync on {TOPIC}/{p}", lambda p=p: pair.in_sync(f"{TOPIC}/{p}"))
        yield pair
    finally:
        pair.close()


def produce(
    address: str, n: int, *, acks: str, tag: str, timeout_ms: int = 30000
) -> tuple[dict[tuple[int, int], bytes], list[KafkaError]]:
    """Produce ``n`` records round-robin over the partitions; return (acked (partition, offset) ->
    value, errors)."""
    acked: dict[tuple[int, int], bytes] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        if err is None:
            acked[(msg.partition(), msg.offset())] = msg.value()  # type: ignore[attr-defined]
        else:
            errors.append(err)

    producer = Producer(
        {"bootstrap.servers": address, "acks": acks, "linger.ms": 2, "message.timeout.ms": timeout_ms}
    )
    for i in range(n):
        value = f"{tag}-{i}".encode()
        while True:
            try:
                producer.produce(TOPIC, value, partition=i % PARTITIONS, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(timeout_ms / 1000 + 10) == 0
    return acked, errors


def read_all(address: str, *, timeout_s: float = 20.0) -> dict[tuple[int, int], bytes]:
    """Every record below each partition's high watermark."""
    consumer = Consumer({"bootstrap.servers": address})
    try:
        out: dict[tuple[int, int], bytes] = {}
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
            consumer.assign([TopicPartition(TOPIC, p, low)])
            deadline = time.monotonic() + timeout_s
            got = low
            while got < high and time.monotonic() < deadline:
                for msg in consumer.consume(10000, timeout=0.5):
                    assert msg.error() is None, msg.error()
                    out[(p, msg.offset())] = msg.value()  # type: ignore[assignment]
                    got = msg.offset() + 1
            assert got == high, f"partition {p}: read to {got}, high watermark {high}"
        return out
    finally:
        consumer.close()


def assert_dense(records: dict[tuple[int, int], bytes]) -> None:
    for p in range(PARTITIONS):
        offsets = sorted(o for q, o in records if q == p)
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True


def assert_identical_logs(replicated: ReplicatedPair, *, leader: str, follower: str) -> None:
    """Once the follower reaches the leader's log end, its segment files hold the same bytes."""
    for p in range(PARTITIONS):
        end = replicated.status(leader)["partitions"][p]["log_end_offset"]
        wait_for(
            f"{follower}'s log end at {leader}'s",
            lambda p=p, end=end: (
                replicated.replication(follower)["partitions"][f"{TOPIC}/{p}"]["log_end_offset"] == end
            ),
        )
        ours = sorted((replicated.root / f"data-{leader}" / f"{TOPIC}-{p}").glob("*.log"))
        theirs = sorted((replicated.root / f"data-{follower}" / f"{TOPIC}-{p}").glob("*.log"))
        assert [x.name for x in ours] == [x.name for x in theirs]
        for x, y in zip(ours, theirs, strict=True):
            # A segment file may be longer than its data (the append reserve): compare the data.
            assert x.read_bytes().rstrip(b"\0") == y.read_bytes().rstrip(b"\0")


def watermarks(address: str, p: int) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": address})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
        return int(low), int(high)
    finally:
        consumer.close()


def test_acks_all_then_the_leader_dies_and_the_promoted_follower_has_every_acked_record(
    replicated: ReplicatedPair,
) -> None:
    acked, errors = produce(replicated.address("a"), 20_000, acks="all", tag="before")
    assert not errors and len(acked) == 20_000
    replicated.kill("a")  # SIGKILL: the supervisor and all its children
    admin = replicated.admin("b")
    try:
        assert admin.promote() == 1  # epoch 0 -> 1
    finally:
        admin.close()
    after = read_all(replicated.address("b"))
    lost = [key for key, value in acked.items() if after.get(key) != value]
    assert lost == [], f"{len(lost)} acked records lost, e.g. {lost[:5]}"
    assert_dense(after)
    # The new leader takes writes at once, in its new epoch.
    more, errors = produce(replicated.address("b"), 1000, acks="1", tag="after")
    assert not errors and len(more) == 1000
    status = replicated.status("b")
    assert status["role"] == "leader" and status["leader_epoch"] == 1


def test_follower_cut_off_acks_all_is_refused_acks_1_goes_on_then_it_catches_up_and_rejoins(
    replicated: ReplicatedPair,
) -> None:
    _acked, errors = produce(replicated.address("a"), 2000, acks="all", tag="up")
    assert not errors
    replicated.net.cut()
    for p in range(PARTITIONS):
        wait_for(f"follower out of sync on {p}", lambda p=p: not replicated.in_sync(f"{TOPIC}/{p}"))
    ends_before = [watermarks(replicated.address("a"), p)[1] for p in range(PARTITIONS)]
    errors_before = sum(r["errors"] for r in replicated.status("a")["partitions"])
    _acked, refused = produce(replicated.address("a"), 10, acks="all", tag="refused", timeout_ms=1500)
    # Refused by the leader (NOT_ENOUGH_REPLICAS, retried until message.timeout.ms), or timed out
    # locally while a retry was in flight: never acked either way, and nothing stored.
    assert not _acked and len(refused) == 10
    assert {e.code() for e in refused} <= {KafkaError.NOT_ENOUGH_REPLICAS, KafkaError._MSG_TIMED_OUT}
    assert sum(r["errors"] for r in replicated.status("a")["partitions"]) > errors_before  # counted
    assert [watermarks(replicated.address("a"), p)[1] for p in range(PARTITIONS)] == ends_before
    ones, errors = produce(replicated.address("a"), 3000, acks="1", tag="alone")
    assert not errors and len(ones) == 3000
    counters_before = replicated.replication("a")["counters"]
    assert counters_before["isr_shrinks"] >= PARTITIONS
    replicated.net.restore()
    for p in range(PARTITIONS):
        wait_for(
            f"follower back in sync on {p}", lambda p=p: replicated.in_sync(f"{TOPIC}/{p}"), timeout_s=30
        )
    leader = replicated.replication("a")["partitions"]
    for p in range(PARTITIONS):
        follower = next(iter(leader[f"{TOPIC}/{p}"]["followers"].values()))
        assert follower["lag_records"] == 0 and follower["lag_bytes"] == 0
    again, errors = produce(replicated.address("a"), 1000, acks="all", tag="again")
    assert not errors and len(again) == 1000


def test_consumers_never_read_above_the_high_watermark(replicated: ReplicatedPair) -> None:
    produce(replicated.address("a"), 100, acks="all", tag="base")
    hw_before = watermarks(replicated.address("a"), 0)[1]
    replicated.net.cut()
    # The follower is still in the in-sync set for up to replica.lag.time.max.ms: the leader's log
    # grows, its high watermark may not.
    ones, _errors = produce(replicated.address("a"), 50, acks="1", tag="unreplicated")
    assert len(ones) == 50
    consumer = Consumer({"bootstrap.servers": replicated.address("a")})
    try:
        consumer.assign([TopicPartition(TOPIC, 0, hw_before)])
        seen_early = consumer.consume(1000, timeout=0.3)
        in_sync_still = replicated.in_sync(f"{TOPIC}/0")
        assert in_sync_still, "test too slow: the follower left the in-sync set before the check"
        assert seen_early == [], "a consumer read records the follower does not have yet"
        # Once the follower drops out, the leader stands alone and they become visible.
        wait_for("follower out of sync", lambda: not replicated.in_sync(f"{TOPIC}/0"))
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < 25 and time.monotonic() < deadline:
            seen += consumer.consume(1000, timeout=0.5)
        assert len(seen) == 25
    finally:
        consumer.close()
        replicated.net.restore()


def test_old_leader_returns_cuts_its_divergent_tail_and_follows(replicated: ReplicatedPair) -> None:
    shared, errors = produce(replicated.address("a"), 1000, acks="all", tag="shared")
    assert not errors
    replicated.net.cut()
    for p in range(PARTITIONS):
        wait_for("follower out of sync", lambda p=p: not replicated.in_sync(f"{TOPIC}/{p}"))
    divergent, errors = produce(replicated.address("a"), 400, acks="1", tag="divergent")
    assert not errors and len(divergent) == 400  # acked with acks=1 by a leader standing alone
    replicated.kill("a")
    replicated.net.restore()
    admin = replicated.admin("b")
    try:
        assert admin.promote() == 1
    finally:
        admin.close()
    newer, errors = produce(replicated.address("b"), 600, acks="1", tag="epoch1")
    assert not errors
    # The old leader comes back with its old config: it asks its peer, learns of epoch 1, follows.
    replicated.start("a")
    status = wait_for("a follows b", lambda: (s := replicated.status("a"))["role"] == "follower" and s)
    assert status["leader_epoch"] == 1
    for p in range(PARTITIONS):
        wait_for(
            f"a in sync on {p}", lambda p=p: replicated.in_sync(f"{TOPIC}/{p}", follower="a"), timeout_s=30
        )
    wait_for("a's cut counted", lambda: replicated.replication("a")["counters"]["truncations"] >= 1)
    assert_identical_logs(replicated, leader="b", follower="a")  # no divergence after healing
    everything = read_all(replicated.address("b"))
    assert all(everything.get(k) == v for k, v in {**shared, **newer}.items())
    assert not any(v.startswith(b"divergent") for v in everything.values())


def test_the_follower_refuses_client_writes(replicated: ReplicatedPair) -> None:
    producer = Producer({"bootstrap.servers": replicated.address("b"), "message.timeout.ms": 1000})
    with pytest.raises(KafkaException) as raised:
        producer.produce(TOPIC, b"x", partition=0)  # the lane hand-over is the leader's
    assert raised.value.args[0].code() == KafkaError.NOT_LEADER_FOR_PARTITION
    admin = replicated.admin("b")
    try:
        with pytest.raises(KafkaException) as raised:
            admin.create_topics([NewTopic("elsewhere", 1)])["elsewhere"].result()
    finally:
        admin.close()
    assert raised.value.args[0].code() == KafkaError.NOT_LEADER_FOR_PARTITION


def test_strangers_on_the_replication_channel_are_refused_counted_and_change_nothing(
    replicated: ReplicatedPair, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    acked, _ = produce(replicated.address("a"), 500, acks="all", tag="before")
    ends = [watermarks(replicated.address("a"), p) for p in range(PARTITIONS)]
    stranger_keys = tmp_path / "stranger"
    stranger_keys.mkdir()
    # b's own key: a legitimate follower that lies about the epoch it has seen.
    argv = [sys.executable, "-m", "tests.integration.replication_stranger",
            f"{replicated.net.ip_a}:9400", str(stranger_keys), str(replicated.root / "keys" / "b.key")]  # fmt: skip
    out = subprocess.run(
        replicated.net.argv(replicated.net.ns_b, argv), capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(out.stdout)
    # Not a frame: a typed ERROR frame (INVALID_REQUEST), then the leader hangs up.
    assert '"code":42' in got["garbage"] and '"code":42' in got["oversize"]
    assert got["unknown-key"] == "CLUSTER_AUTHORIZATION_FAILED"
    assert got["no-key"] == "CLUSTER_AUTHORIZATION_FAILED"
    assert got["future-epoch"] == "UNKNOWN_LEADER_EPOCH"
    wait_for(  # the replicator's status is written twice a second
        "strangers counted",
        lambda: (c := replicated.replication("a")["counters"])["bad_peers"] >= 3 and c["refused_peers"] >= 1,
    )
    assert [watermarks(replicated.address("a"), p) for p in range(PARTITIONS)] == ends
    for p in range(PARTITIONS):
        assert replicated.in_sync(f"{TOPIC}/{p}")  # the real follower never noticed
    more, errors = produce(replicated.address("a"), 100, acks="all", tag="after")
    assert not errors and len(more) == 100
    assert read_all(replicated.address("a")).items() >= acked.items()


def _child_titled(broker: object, title: str, *, not_pid: int = 0) -> int:
    def find() -> int | None:
        for child in broker.children():  # type: ignore[attr-defined]
            try:
                if child.pid != not_pid and title in " ".join(child.cmdline()):
                    return int(child.pid)
            except Exception:
                continue
        return None

    return int(wait_for(f"a process titled {title!r}", find))


def test_the_leaders_replication_process_killed_under_load_is_restarted_and_loses_nothing(
    replicated: ReplicatedPair,
) -> None:
    import os
    import signal
    import threading

    result: dict[str, object] = {}

    def load() -> None:
        result["acked"], result["errors"] = produce(replicated.address("a"), 30_000, acks="all", tag="load")

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(0.3)
    first = _child_titled(replicated.brokers["a"], "shmbroker: replication leader")
    os.kill(first, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    acked = result["acked"]
    assert isinstance(acked, dict) and not result["errors"] and len(acked) == 30_000
    # The supervisor restarted it: a new pid with that title appears (the killed one may still be
    # listed a moment, e.g. while a SIGKILL waits for a disk-bound syscall to return under load).
    _child_titled(replicated.brokers["a"], "shmbroker: replication leader", not_pid=first)
    for p in range(PARTITIONS):
        wait_for(f"follower in sync again on {p}", lambda p=p: replicated.in_sync(f"{TOPIC}/{p}"))
    replicated.kill("a")
    admin = replicated.admin("b")
    try:
        admin.promote()
    finally:
        admin.close()
    after = read_all(replicated.address("b"))
    lost = [k for k, v in acked.items() if after.get(k) != v]
    assert lost == []
    assert_dense(after)


def test_a_paused_follower_drops_out_of_the_in_sync_set_and_rejoins_when_resumed(
    replicated: ReplicatedPair,
) -> None:
    import signal

    import psutil

    follower = replicated.brokers["b"]
    family = [psutil.Process(follower.pid), *follower.children()]
    for p in family:
        p.send_signal(signal.SIGSTOP)
    try:
        wait_for("follower out of sync", lambda: not replicated.in_sync(f"{TOPIC}/0"))
        ones, errors = produce(replicated.address("a"), 2000, acks="1", tag="paused")
        assert not errors and len(ones) == 2000
    finally:
        for p in family:
            p.send_signal(signal.SIGCONT)
    for p in range(PARTITIONS):
        wait_for(
            f"follower back in sync on {p}", lambda p=p: replicated.in_sync(f"{TOPIC}/{p}"), timeout_s=30
        )
    again, errors = produce(replicated.address("a"), 500, acks="all", tag="resumed")
    assert not errors and len(again) == 500


def test_a_follower_whose_disk_fills_falls_out_then_catches_up_once_there_is_room(
    tmp_path: Path, netns_pair: NetnsPair
) -> None:
    import subprocess

    pair = ReplicatedPair(tmp_path, netns_pair)
    disk = tmp_path / "data-b"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True, timeout=10)
    try:
        pair.start("a")
        pair.start("b")
        admin = pair.admin("a")
        try:
            for future in admin.create_topics([NewTopic(TOPIC, 1)]).values():
                future.result()
        finally:
            admin.close()
        wait_for("follower in sync", lambda: pair.in_sync(f"{TOPIC}/0"))
        producer = Producer({"bootstrap.servers": pair.address("a"), "acks": "1", "linger.ms": 5})
        for i in range(40_000):  # ~40 MiB: more than the follower's 24 MiB disk
            while True:
                try:
                    producer.produce(TOPIC, i.to_bytes(4, "big") * 256, partition=0)
                    break
                except BufferError:
                    producer.poll(0.01)
        assert producer.flush(60) == 0
        wait_for("follower out of sync", lambda: not pair.in_sync(f"{TOPIC}/0"))
        # The leader then stands alone: its high watermark reaches its log end.
        leader_end = wait_for(
            "high watermark at the log end", lambda: watermarks(pair.address("a"), 0)[1] == 40_000
        )
        leader_end = 40_000
        counters = wait_for(
            "the follower's error counted",
            lambda: (c := pair.replication("b")["counters"])["follow_errors"] >= 1 and c,
        )
        assert counters["follow_errors"] >= 1, "".join(pair.brokers["b"].output)  # KAFKA_STORAGE_ERROR
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True, timeout=10)
        wait_for("follower back in sync", lambda: pair.in_sync(f"{TOPIC}/0"), timeout_s=60)
        wait_for(  # the follower's own status is written twice a second
            "the follower's log end at the leader's",
            lambda: pair.replication("b")["partitions"][f"{TOPIC}/0"]["log_end_offset"] == leader_end,
        )
    finally:
        pair.close()
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=10)


def test_a_follower_killed_then_cut_mid_catch_up_resumes_and_ends_identical(
    replicated: ReplicatedPair,
) -> None:
    """SIGKILL the follower, build a backlog, restart it, cut the link while it is catching up
    (a DATA frame torn mid-sendfile): nothing torn is written, it resumes from its log end after
    a new handshake, and ends with the leader's bytes."""
    replicated.kill("b")
    producer = Producer({"bootstrap.servers": replicated.address("a"), "acks": "1", "linger.ms": 5})
    value = b"v" * 1000
    for i in range(150_000):  # ~150 MB of backlog
        while True:
            try:
                producer.produce(TOPIC, value, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0
    replicated.start("b")
    wait_for(
        "catch-up started",
        lambda: replicated.replication("b").get("counters", {}).get("bytes_received", 0) > 0,
    )
    replicated.net.cut()
    time.sleep(SOCKET_TIMEOUT_S_FOR_TESTS)
    replicated.net.restore()
    for p in range(PARTITIONS):
        wait_for(f"in sync again on {p}", lambda p=p: replicated.in_sync(f"{TOPIC}/{p}"), timeout_s=60)
    assert_identical_logs(replicated, leader="a", follower="b")
    assert replicated.replication("b")["counters"]["follow_errors"] >= 1  # the cut was noticed
