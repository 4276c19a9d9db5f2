"""Consumer groups end to end: a real broker (coordinator process and relay), real consumer processes.

Consumer processes are this module run as ``python -m tests.integration.test_groups child ...``: they
log every assignment change and every record they were given (one JSON line per batch, written
before the next poll, so a SIGKILL loses nothing the test needs). Short session timeouts (6 s, the
coordinator's minimum) keep the file to about two minutes; every wait has a deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from shmbroker import AdminClient, Consumer, NewTopic, Producer, TopicPartition
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration

SESSION_MS = 6000
FAST = {
    "session.timeout.ms": SESSION_MS,
    "heartbeat.interval.ms": 500,
    "max.poll.interval.ms": 15000,
    "auto.commit.interval.ms": 1000,
    "request.timeout.ms": 5000,
    "auto.offset.reset": "earliest",
}


# -- helpers ------------------------------------------------------------------------------------------
def create(broker: BrokerProcess, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic].result()
    finally:
        admin.close()


def produce(broker: BrokerProcess, topic: str, partitions: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 1})
    for i in range(n):
        producer.produce(topic, b"v%d" % i, partition=i % partitions)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    producer.close()


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, step: Callable[[], None] | None = None
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if step is not None:
            step()
        result = condition()
        if result:
            return result
        if step is None:
            time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def consumer(broker: BrokerProcess, group: str, **extra: Any) -> Consumer:
    return Consumer({"bootstrap.servers": broker.address, "group.id": group, **FAST, **extra})


def pump(consumers: list[Consumer]) -> Callable[[], None]:
    def step() -> None:
        for c in consumers:
            c.consume(1000, timeout=0.02)

    return step


def balanced(consumers: list[Consumer], partitions: int) -> bool:
    sets = [{(tp.topic, tp.partition) for tp in c.assignment()} for c in consumers]
    union = set().union(*sets)
    return (
        len(union) == partitions == sum(len(s) for s in sets)
        and max(map(len, sets)) - min(map(len, sets)) <= 1
    )


def describe(broker: BrokerProcess, group: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "shmbroker", "groups", "describe", group, "--json", "--bootstrap", broker.address],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, f"groups describe {group}: exit {out.returncode}: {out.stderr[-2000:]}"
    return dict(json.loads(out.stdout))


class Child:
    """One consumer process and its log."""

    def __init__(
        self,
        broker: BrokerProcess,
        topic: str,
        group: str,
        log: Path,
        instance: str = "-",
        transport: str = "auto",
    ) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_groups", "child", broker.address, topic, group,
             str(log), instance, transport],
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip

    def lines(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line of a killed child
        return out

    def records(self) -> list[tuple[float, int, int]]:
        return [(e["t"], p, o) for e in self.lines() if "r" in e for p, o in e["r"]]

    def assignment(self) -> tuple[float, set[int]] | None:
        """(time, partitions) of the last assignment change, or None before the first."""
        current: set[int] | None = None
        at = 0.0
        for e in self.lines():
            if "assign" in e:
                current, at = set(e["assign"]), e["t"]
            elif "revoke" in e and current is not None:
                current, at = current - set(e["revoke"]), e["t"]
        return None if current is None else (at, current)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.stop(signal.SIGKILL)


def child_main(address: str, topic: str, group: str, log_path: str, instance: str, transport: str) -> None:
    conf: dict[str, Any] = {
        "bootstrap.servers": address,
        "group.id": group,
        "shmbroker.transport": transport,
        **FAST,
    }
    if instance != "-":
        conf["group.instance.id"] = instance
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(log_path, "a", buffering=1) as log:

        def note(kind: str) -> Callable[[Consumer, list[TopicPartition]], None]:
            return lambda _c, parts: log.write(
                json.dumps({"t": time.time(), kind: [p.partition for p in parts]}) + "\n"
            )

        c = Consumer(conf)
        c.subscribe([topic], on_assign=note("assign"), on_revoke=note("revoke"), on_lost=note("revoke"))
        while not stop.is_set():
            got = [[m.partition(), m.offset()] for m in c.consume(500, timeout=0.1) if m.error() is None]
            if got:
                log.write(json.dumps({"t": time.time(), "r": got}) + "\n")
        c.close()


# -- tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_three_consumer_processes_read_every_record_exactly_once(
    broker: BrokerProcess, tmp_path: Path, children: list[Child], transport: str
) -> None:
    create(broker, "ex", 6)
    produce(broker, "ex", 6, 3000)
    children.extend(
        Child(broker, "ex", "g-ex", tmp_path / f"c{i}.log", transport=transport) for i in range(3)
    )
    wait_for(lambda: all((a := c.assignment()) and len(a[1]) == 2 for c in children), 30, "2 partitions each")
    produce(broker, "ex", 6, 3000)
    wait_for(lambda: len({(p, o) for c in children for _t, p, o in c.records()}) >= 6000, 30, "6000 records")
    for c in children:
        c.stop()
    counts = Counter((p, o) for c in children for _t, p, o in c.records())
    assert set(counts) == {(p, o) for p in range(6) for o in range(1000)}
    assert max(counts.values()) == 1


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_each_assignor_balances_six_partitions_over_three_members(
    broker: BrokerProcess, strategy: str
) -> None:
    create(broker, "bal", 6)
    consumers = [
        consumer(broker, f"g-{strategy}", **{"partition.assignment.strategy": strategy}) for _ in range(3)
    ]
    try:
        for c in consumers:
            c.subscribe(["bal"])
        wait_for(lambda: balanced(consumers, 6), 30, f"{strategy}: 2 partitions each", pump(consumers))
        info = describe(broker, f"g-{strategy}")
        assert info["protocol_name"] == strategy
        assert sorted(len(m["assignment"]) for m in info["members"]) == [2, 2, 2]
    finally:
        for c in consumers:
            c.close()


def test_cooperative_newcomer_moves_only_what_it_takes(broker: BrokerProcess) -> None:
    create(broker, "coop", 6)
    produce(broker, "coop", 6, 600)
    conf = {"partition.assignment.strategy": "cooperative-sticky"}
    revoked: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def on_revoke(i: int) -> Callable[[Consumer, list[TopicPartition]], None]:
        return lambda _c, parts: revoked[i].extend(tp.partition for tp in parts)

    consumers = [consumer(broker, "g-coop", **conf) for _ in range(2)]
    try:
        for i, c in enumerate(consumers):
            c.subscribe(["coop"], on_revoke=on_revoke(i))
        wait_for(lambda: balanced(consumers, 6), 30, "3 partitions each", pump(consumers))
        before = [{tp.partition for tp in c.assignment()} for c in consumers]
        consumers.append(consumer(broker, "g-coop", **conf))
        consumers[2].subscribe(["coop"], on_revoke=on_revoke(2))
        wait_for(lambda: balanced(consumers, 6), 30, "2 partitions each", pump(consumers))
        after = [{tp.partition for tp in c.assignment()} for c in consumers]
        for i in range(2):
            assert sorted(revoked[i]) == sorted(before[i] - after[i]), "only moved partitions are revoked"
            assert len(before[i] - after[i]) == 1
        assert after[2] == (before[0] - after[0]) | (before[1] - after[1])
        assert describe(broker, "g-coop")["protocol_name"] == "cooperative-sticky"
    finally:
        for c in consumers:
            c.close()


def test_sigkilled_member_partitions_move_and_nothing_is_skipped(
    broker: BrokerProcess, tmp_path: Path, children: list[Child]
) -> None:
    create(broker, "kill", 6)
    produced = Counter[int]()
    stop = threading.Event()

    def producer_loop() -> None:
        producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 2})
        i = 0
        while not stop.is_set():
            for _ in range(60):
                producer.produce("kill", b"x", partition=i % 6)
                produced[i % 6] += 1
                i += 1
            producer.poll(0)
            time.sleep(0.02)
        assert producer.flush(30) == 0
        producer.close()

    feeder = threading.Thread(target=producer_loop, daemon=True)
    feeder.start()
    try:
        children.extend(Child(broker, "kill", "g-kill", tmp_path / f"k{i}.log") for i in range(3))
        wait_for(
            lambda: all((a := c.assignment()) and len(a[1]) == 2 for c in children), 30, "2 partitions each"
        )
        wait_for(lambda: all(c.records() for c in children), 10, "records at every member")
        time.sleep(1.5)
        victim, survivors = children[0], children[1:]
        victim.process.kill()
        killed_at = time.time()
        victim.process.wait(5)

        def moved() -> float | None:
            owned = [c.assignment() for c in survivors]
            if all(owned) and set().union(*(a[1] for a in owned if a)) == set(range(6)):
                return max(a[0] for a in owned if a)
            return None

        moved_at = wait_for(moved, SESSION_MS / 1000 + 10, "the victim's partitions to move")
        assert moved_at - killed_at <= SESSION_MS / 1000 + 1.0
        time.sleep(2)
    finally:
        stop.set()
        feeder.join(30)
    total = sum(produced.values())
    wait_for(
        lambda: len({(p, o) for c in children for _t, p, o in c.records()}) >= total, 30, f"{total} records"
    )
    seen = Counter((p, o) for c in children for _t, p, o in c.records())
    skipped = {(p, o) for p in range(6) for o in range(produced[p])} - set(seen)
    assert not skipped, f"poll_skip = {len(skipped)}"
    duplicates = {k for k, n in seen.items() if n > 1}
    victim_recent = {(p, o) for t, p, o in victim.records() if t >= killed_at - 2.5}
    assert duplicates <= victim_recent, "only the victim's uncommitted window may be read twice"
    print(f"moved after {moved_at - killed_at:.2f} s; {total} records, {len(duplicates)} read twice")


def test_static_member_restart_keeps_the_generation(broker: BrokerProcess) -> None:
    create(broker, "st", 4)
    group = "g-static"
    revoked: list[Any] = []
    a = consumer(broker, group, **{"group.instance.id": "s-a"})
    b = consumer(broker, group, **{"group.instance.id": "s-b"})
    a.subscribe(["st"], on_revoke=lambda _c, parts: revoked.extend(parts))
    b.subscribe(["st"])
    try:
        wait_for(lambda: balanced([a, b], 4), 30, "a stable group", pump([a, b]))
        generation = describe(broker, group)["generation_id"]
        before = sorted((tp.topic, tp.partition) for tp in b.assignment())
        b.close()
        b = consumer(broker, group, **{"group.instance.id": "s-b"})
        b.subscribe(["st"])
        wait_for(lambda: balanced([a, b], 4), 15, "the static member back", pump([a, b]))
        assert sorted((tp.topic, tp.partition) for tp in b.assignment()) == before
        info = describe(broker, group)
        assert info["generation_id"] == generation
        assert info["state"] == "Stable"
        assert revoked == []
    finally:
        a.close()
        b.close()


def test_max_poll_interval_exceeded_leaves_the_group_and_poll_reports_it(broker: BrokerProcess) -> None:
    create(broker, "mp", 2)
    lost: list[Any] = []
    c = consumer(broker, "g-mp", **{"max.poll.interval.ms": SESSION_MS})
    c.subscribe(["mp"], on_lost=lambda _c, parts: lost.extend(parts))
    try:
        wait_for(lambda: len(c.assignment()) == 2, 30, "an assignment", pump([c]))
        member = describe(broker, "g-mp")["members"][0]["member_id"]
        time.sleep(SESSION_MS / 1000 + 1.0)  # the application "hangs": the heartbeat thread leaves
        assert wait_for(lambda: not describe(broker, "g-mp")["members"], 5, "the member to leave")
        error = c.poll(1.0)
        assert error is not None
        assert error.error() is not None
        assert error.error().code() == -147  # _MAX_POLL_EXCEEDED
        assert sorted(tp.partition for tp in lost) == [0, 1]
        assert c.assignment() == []
        wait_for(lambda: len(c.assignment()) == 2, 30, "the member back", pump([c]))
        assert describe(broker, "g-mp")["members"][0]["member_id"] != member
    finally:
        c.close()


def coordinator_pid(broker: BrokerProcess) -> int | None:
    for child in broker.children():
        try:
            if "shmbroker: coordinator" in " ".join(child.cmdline()):
                return int(child.pid)
        except psutil.Error:
            continue
    return None


def test_coordinator_killed_restarts_members_rejoin_and_acked_commits_survive(broker: BrokerProcess) -> None:
    from shmbroker import KafkaException

    create(broker, "co", 4)
    produce(broker, "co", 4, 4000)
    consumers = [consumer(broker, "g-co", **{"enable.auto.commit": False}) for _ in range(2)]
    acked: dict[tuple[str, int], int] = {}
    acks = Counter[str]()

    def commit_all() -> None:
        for c in consumers:
            c.consume(100, timeout=0.02)
            try:
                for tp in c.commit(asynchronous=False) or []:
                    acked[(tp.topic, tp.partition)] = max(acked.get((tp.topic, tp.partition), 0), tp.offset)
                acks["ok"] += 1
            except KafkaException:
                acks["failed"] += 1  # not acked: may or may not be stored

    try:
        for c in consumers:
            c.subscribe(["co"])
        wait_for(lambda: balanced(consumers, 4), 30, "a stable group", pump(consumers))
        for _ in range(5):
            commit_all()
        old = wait_for(lambda: coordinator_pid(broker), 5, "the coordinator process")
        members_before = {m["member_id"] for m in describe(broker, "g-co")["members"]}
        acked_before = dict(acked)
        psutil.Process(old).kill()
        wait_for(lambda: (pid := coordinator_pid(broker)) and pid != old, 20, "a new coordinator", commit_all)
        wait_for(
            lambda: balanced(consumers, 4) and describe(broker, "g-co")["state"] == "Stable", 40,
            "the members back in a stable group", commit_all,
        )  # fmt: skip
        ok_before = acks["ok"]
        for _ in range(5):
            commit_all()
        assert acks["ok"] > ok_before, f"no commit acknowledged after the restart: {acks}"
        members_after = {m["member_id"] for m in describe(broker, "g-co")["members"]}
        assert len(members_after) == 2
        assert not members_before & members_after, "the restarted coordinator cannot know the old members"
        assert acked_before, "no commit was acknowledged before the kill"
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumers[0].committed(
            [TopicPartition("co", p) for p in range(4)], timeout=10)}  # fmt: skip
        for key, offset in acked.items():
            assert committed[key] >= offset, f"acked commit {key}@{offset} lost: {committed[key]}"
        for key, offset in acked_before.items():
            assert committed[key] >= offset
    finally:
        for c in consumers:
            c.close()


def test_groups_describe_lag_is_end_minus_committed_and_reset_needs_execute(broker: BrokerProcess) -> None:
    create(broker, "lag", 3)
    produce(broker, "lag", 3, 300)
    c = consumer(broker, "g-lag", **{"enable.auto.commit": False})
    c.subscribe(["lag"])
    try:
        wait_for(lambda: len(c.assignment()) == 3, 30, "an assignment", pump([c]))
        c.commit(offsets=[TopicPartition("lag", p, 10 * (p + 1)) for p in range(3)], asynchronous=False)
        info = describe(broker, "g-lag")
        rows = {r["partition"]: r for r in info["partitions"]}
        for p in range(3):
            assert rows[p]["log_end_offset"] == 100
            assert rows[p]["committed_offset"] == 10 * (p + 1)
            assert rows[p]["lag"] == rows[p]["log_end_offset"] - rows[p]["committed_offset"]
            assert rows[p]["member_id"]
    finally:
        c.close()
    cmd = [sys.executable, "-m", "shmbroker", "groups", "reset-offsets", "g-lag", "--topic", "lag", "--to-earliest",
           "--bootstrap", broker.address]  # fmt: skip
    subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    assert {r["committed_offset"] for r in describe(broker, "g-lag")["partitions"]} == {10, 20, 30}
    subprocess.run([*cmd, "--execute"], capture_output=True, text=True, timeout=30, check=True)
    assert {r["lag"] for r in describe(broker, "g-lag")["partitions"]} == {100}


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child_main(*sys.argv[2:8])
