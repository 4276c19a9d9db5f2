"""Replication figures, each as a ratio to a reference measured in the same run:

    .venv/bin/python -m perf.bench_replication [--runs 5] [--records 1000000] [--catchup-mib 1024]
                                               [--only produce|catchup]          # root; from the repo root

1. acks=all produce throughput / acks=1 (target >= 0.5). Brokers "a" (leader, ns_a) and "b"
   (follower, ns_b) of tests/integration/replication_fixture.py, min.insync.replicas = 2, one
   1-partition topic with the follower in sync. One local Producer in this process (root namespace,
   shared-memory lane, ``pair.address("a")``), 100-byte records to partition 0, a fresh Producer per
   run with one warm-up record flushed before the clock. Runs alternate acks=1 / acks=all, so drift
   hits both; the clock runs from the first produce to flush() returning with every record acked.
   Before each run the follower is in sync and caught up (the high watermark equals the log end);
   after each run the log end must have grown by exactly the records sent. Two APIs:
   ``produce()`` with ``poll(0.0005)`` on BufferError, and ``produce_batch()`` of 100k-row uint8
   arrays. Producer settings: PRODUCER_CONF below (printed in the JSON).

2. Catch-up of a ~``--catchup-mib`` log / raw sendfile over the same veth (target >= 0.5). Broker
   "a" alone (the follower never runs) gets one 1-partition topic filled with ``produce_batch``
   (1 KiB records, acks=1) up to the size asked. Each run then starts a fresh follower: a child
   process in ns_b that builds ``shmbroker.workers.replicator.Follower`` on an empty data dir (it
   mirrors the leader's topics on the handshake) and runs ``follow_once`` in a thread. The child's
   clock starts just before ``follow_once`` (after interpreter start-up and imports; the TCP connect,
   key handshake, topic mirroring and log creation are inside it) and stops when the follower's log
   end, polled every POLL_S, equals the leader's. MB/s = the leader's log bytes / that span. The
   reference, ``perf.bench_sendfile.raw_sendfile_mb_s``, sends a file of exactly the same size
   between the same namespaces; runs alternate reference / catch-up, and the ratio is per pair.

JSON on stdout (every run, median/min/max of each figure and ratio, settings), one human line per
figure on stderr. MB = 10^6 bytes. Every broker and child is stopped by pid, temp dirs are removed
and both namespaces deleted on the way out, even on error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perf.bench_sendfile import MIB, READY_TIMEOUT_S, _read_json, raw_sendfile_mb_s, write_file
from tests.integration.replication_fixture import REPLICATION_PORT, ReplicatedPair
from tests.integration.replication_fixture import wait_for as fixture_wait_for
from tests.netns import NetnsPair, netns_available

REPO_ROOT = Path(__file__).resolve().parent.parent
TOPIC, CATCHUP_TOPIC = "bench", "catchup"
VALUE_BYTES = 100  # figure 1
FILL_VALUE_BYTES = 1024  # figure 2: the fill's record size (only the log's bytes matter to a follower)
BATCH_ROWS = 100_000  # rows per produce_batch call
PRODUCER_CONF: dict[str, Any] = {
    "linger.ms": 5,
    "batch.size": 1_000_000,  # the defaults, spelled out so the JSON shows them
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
    "message.timeout.ms": 60_000,
}
EXTRA_BROKER_CONF = '"min.insync.replicas" = 2\n'  # acks=all really waits for the follower
POLL_S = 0.001  # the catch-up child's poll of the follower's log end
SETTLE_TIMEOUT_S = 60.0  # in sync, caught up, topic visible: waits between timed spans


def produce_timeout_s(records: int) -> float:
    return 30.0 + records / 20_000  # 20k records/s: only a hang trips it


def catchup_timeout_s(size_bytes: int) -> float:
    return 30.0 + size_bytes / 20e6


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = SETTLE_TIMEOUT_S) -> Any:
    return fixture_wait_for(what, check, timeout_s)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def spread(s: dict[str, float], fmt: str = ".2f") -> str:
    return f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]"


@contextmanager
def replicated_pair(net: NetnsPair, extra: str = "") -> Iterator[ReplicatedPair]:
    """A ReplicatedPair in a fresh temp dir; its brokers stopped (by pid) and the dir removed after."""
    root = Path(tempfile.mkdtemp(prefix="bench-repl-", dir="/tmp"))
    pair = ReplicatedPair(root, net, extra=extra)
    try:
        yield pair
    finally:
        pair.close()
        shutil.rmtree(root, ignore_errors=True)


class LeaderProbe:
    """One AdminClient and one Consumer on broker "a", kept for the whole phase: the waits between
    runs poll it 20 times a second, and a client per poll would pile up connections on the broker."""

    def __init__(self, pair: Any) -> None:
        from shmbroker import AdminClient, Consumer

        self.address = pair.address("a")
        self.admin = AdminClient({"bootstrap.servers": self.address, "request.timeout.ms": 10_000})
        self.consumer = Consumer({"bootstrap.servers": self.address})
        self.follower = f"{pair.net.ip_b}:{REPLICATION_PORT}"

    def create_topic(self, topic: str) -> None:
        from shmbroker import NewTopic

        for future in self.admin.create_topics([NewTopic(topic, 1)]).values():
            future.result()

    def high_watermark(self, topic: str) -> int:
        from shmbroker import TopicPartition

        return int(self.consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])

    def replication(self) -> dict[str, Any]:
        return dict(self.admin.status().get("replication") or {})

    def partition(self, tp: str) -> dict[str, Any]:
        """The leader's replication status of ``tp`` (its replicator writes it every 0.5 s)."""
        return dict(self.replication().get("partitions", {}).get(tp, {}))

    def in_sync(self, tp: str) -> bool:
        return self.follower in self.partition(tp).get("isr", [])

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


# ---- figure 1: acks=all / acks=1 ----------------------------------------------------------------
def produce_run(address: str, acks: str, api: str, n: int) -> float:
    """records/s of ``n`` 100-byte records to partition 0, first produce to flush() done."""
    import numpy as np

    from shmbroker import Producer

    deadline = time.monotonic() + produce_timeout_s(n)
    producer = Producer({**PRODUCER_CONF, "bootstrap.servers": address, "acks": acks})
    try:
        producer.produce(TOPIC, b"warm-up", partition=0)  # opens the lane before the clock starts
        if producer.flush(10) != 0:
            raise RuntimeError("the warm-up record was not acked within 10 s")
        payload = os.urandom(VALUE_BYTES)
        rows = np.frombuffer(payload * BATCH_ROWS, dtype=np.uint8).reshape(BATCH_ROWS, VALUE_BYTES)
        sent = 0
        start = time.perf_counter()
        if api == "produce":
            produce, poll = producer.produce, producer.poll
            while sent < n:
                try:
                    produce(TOPIC, payload, partition=0)
                    sent += 1
                except BufferError:
                    poll(0.0005)
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"acks={acks} {api}: {sent} of {n} queued by the deadline"
                        ) from None
        else:
            while sent < n:
                k = min(BATCH_ROWS, n - sent)
                try:
                    producer.produce_batch(TOPIC, rows[:k], partition=0)
                    sent += k
                except BufferError:
                    producer.poll(0.001)
                if len(producer) > 400_000:
                    producer.poll(0.001)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"acks={acks} {api}: {sent} of {n} queued by the deadline")
        left = producer.flush(max(1.0, deadline - time.monotonic()))
        seconds = time.perf_counter() - start
        if left:
            raise RuntimeError(f"acks={acks} {api}: {left} records still undelivered at the deadline")
        return n / seconds
    finally:
        producer.close(5)


def settle(probe: LeaderProbe, tp: str, expect: int | None = None) -> int:
    """Wait until the follower is in sync and has everything (high watermark = log end); return it.

    The log end comes from the replicator's status, written every 0.5 s: while the follower still
    catches up, the high watermark passes through the log ends of earlier snapshots and can equal a
    stale one. So after a run, whose end is known (``expect``), wait for that offset itself."""
    wait_for(f"follower in sync on {tp}", lambda: probe.in_sync(tp))

    def caught_up() -> tuple[int] | None:
        hw = probe.high_watermark(TOPIC)
        if expect is not None:
            return (hw,) if hw == expect else None
        return (hw,) if hw == probe.partition(tp).get("log_end_offset") else None

    return int(wait_for("high watermark = leader log end", caught_up)[0])


def produce_figure(net: NetnsPair, runs: int, n: int, batch_n: int) -> dict[str, Any]:
    with replicated_pair(net, EXTRA_BROKER_CONF) as pair:
        pair.start("a")
        pair.start("b")
        probe = LeaderProbe(pair)
        try:
            probe.create_topic(TOPIC)
            counters_before = probe.replication()["counters"]
            out: dict[str, Any] = {}
            for api, count in (("produce", n), ("produce_batch", batch_n)):
                if count > 0:
                    out[api] = produce_runs(pair.address("a"), probe, api, runs, count)
            shrinks = probe.replication()["counters"]["isr_shrinks"] - counters_before["isr_shrinks"]
            out["isr_shrinks_during"] = shrinks
            return out
        finally:
            probe.close()


def produce_runs(address: str, probe: LeaderProbe, api: str, runs: int, count: int) -> dict[str, Any]:
    """``runs`` pairs of acks=1 and acks=all runs, alternating which goes first (ABBA...)."""
    tp = f"{TOPIC}/0"
    rates: dict[str, list[float]] = {"1": [], "all": []}
    for run in range(runs):
        for acks in ("1", "all") if run % 2 == 0 else ("all", "1"):
            end_before = settle(probe, tp)
            rates[acks].append(produce_run(address, acks, api, count))
            end_after = settle(probe, tp, expect=end_before + count + 1)
            if end_after != end_before + count + 1:  # +1: the warm-up record
                raise RuntimeError(f"log end {end_before} -> {end_after}; expected +{count + 1}")
            print(
                f"{api} run {run + 1}/{runs} acks={acks}: {rates[acks][-1]:,.0f} records/s", file=sys.stderr
            )
    ratios = [a / b for a, b in zip(rates["all"], rates["1"], strict=True)]
    return {
        "records": count,
        "acks_1_records_s": {**summary(rates["1"]), "runs": rates["1"]},
        "acks_all_records_s": {**summary(rates["all"]), "runs": rates["all"]},
        "ratio_all_to_1": {**summary(ratios), "runs": ratios},
    }


# ---- figure 2: catch-up / raw sendfile ----------------------------------------------------------
def fill(pair: ReplicatedPair, probe: LeaderProbe, target_bytes: int) -> None:
    """Produce 1 KiB records (acks=1, produce_batch) to CATCHUP_TOPIC until its log holds
    ``target_bytes`` (the record estimate errs low; a last small top-up then crosses it)."""
    import numpy as np

    from shmbroker import Producer

    directory = pair.root / "data-a" / f"{CATCHUP_TOPIC}-0"
    rows = np.frombuffer(os.urandom(FILL_VALUE_BYTES) * 4096, dtype=np.uint8).reshape(4096, FILL_VALUE_BYTES)
    producer = Producer({"bootstrap.servers": pair.address("a"), "acks": 1, "linger.ms": 5})
    deadline = time.monotonic() + catchup_timeout_s(target_bytes)
    try:
        while (have := log_bytes(directory, probe.high_watermark(CATCHUP_TOPIC))) < target_bytes:
            todo = max(1, (target_bytes - have) // (FILL_VALUE_BYTES + 16))
            while todo > 0 and time.monotonic() < deadline:
                k = min(len(rows), todo)
                try:
                    producer.produce_batch(CATCHUP_TOPIC, rows[:k], partition=0)
                    todo -= k
                except BufferError:
                    producer.poll(0.01)
            if producer.flush(max(1.0, deadline - time.monotonic())) or time.monotonic() > deadline:
                raise RuntimeError(f"fill: {have} of {target_bytes} bytes (and more) by the deadline")
    finally:
        producer.close(5)


def log_bytes(directory: Path, upto_offset: int) -> int:
    """Bytes of the batches below ``upto_offset`` (the log end: LogReader trusts it) in the partition
    log at ``directory``. Not the files' sizes: an active segment carries a preallocated tail
    (segment.RESERVE_AHEAD_BYTES)."""
    from shmbroker.disk.reader import LogReader

    if not directory.exists():
        return 0
    reader = LogReader(directory)
    try:
        offset, total = reader.log_start_offset or 0, 0
        while (found := reader.locate_file(offset, 1 << 30, upto_offset=upto_offset)) is not None:
            _path, start, stop, offset = found
            total += stop - start
        return total
    finally:
        reader.close()


def follower_child(argv: dict[str, Any]) -> None:
    """Child mode, inside ns_b: follow the leader from an empty data dir until the follower's log
    end of ``tp`` reaches ``target``; print {"seconds", "handshake_s", "log_end_offset"}."""
    from shmbroker.config import LogConfig
    from shmbroker.workers.replicator import Follower, ReplicationSpec

    data_dir = Path(argv["data_dir"])
    spec = ReplicationSpec(
        data_dir=data_dir,
        status_path=data_dir / "replication-status.json",
        node=argv["node"],
        listener="",
        peers=(argv["leader"],),
        role="follower",
        epoch=0,
        lag_time_max_ms=30_000,
        socket_timeout_ms=10_000,
        key_file=argv["key_file"],
        allowed_keys_dir="",
        log_config=LogConfig(),
    )
    follower = Follower(spec, Counter())
    tp, target = argv["tp"], int(argv["target"])
    failure: list[BaseException] = []

    def follow() -> None:
        try:
            follower.follow_once()
        except BaseException as exc:  # reported below, unless we ended it
            if not follower.stopping.is_set():
                failure.append(exc)

    thread = threading.Thread(target=follow, daemon=True)
    deadline = time.monotonic() + float(argv["timeout_s"])
    handshake_s = -1.0
    start = time.perf_counter()
    thread.start()
    while True:
        now = time.perf_counter()
        if handshake_s < 0 and follower.connected:
            handshake_s = now - start
        lg = follower.logs.get(tp)
        if lg is not None and lg.log_end_offset >= target:
            break
        if failure or time.monotonic() > deadline:
            raise RuntimeError(f"follower at {lg and lg.log_end_offset} of {target}: {failure!r}")
        time.sleep(POLL_S)
    seconds = now - start
    end = lg.log_end_offset
    follower.wake()
    thread.join(timeout=10)
    for log in follower.logs.values():
        log.close(clean=False)  # no flush: the parent deletes the dir, so its 1 GiB is never written back
    print(json.dumps({"seconds": seconds, "handshake_s": handshake_s, "log_end_offset": end}), flush=True)


def catchup_run(net: NetnsPair, pair: Any, tp: str, target: int, size_bytes: int) -> dict[str, Any]:
    """One fresh follower's catch-up: MB/s and the child's report."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-follower-", dir="/tmp"))
    child = None
    try:
        args = {
            "data_dir": str(data_dir),
            "node": f"{net.ip_b}:{REPLICATION_PORT}",
            "leader": f"{net.ip_a}:{REPLICATION_PORT}",
            "key_file": str(pair.root / "keys" / "b.key"),
            "tp": tp,
            "target": target,
            "timeout_s": catchup_timeout_s(size_bytes),
        }
        argv = [sys.executable, "-m", "perf.bench_replication", "--follower-child", json.dumps(args)]
        child = net.popen(net.ns_b, argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        result = _read_json(child, READY_TIMEOUT_S + catchup_timeout_s(size_bytes))
        got = log_bytes(data_dir / f"{CATCHUP_TOPIC}-0", target)
        if result["log_end_offset"] != target or got != size_bytes:
            raise RuntimeError(f"follower ended at {result['log_end_offset']} ({got} bytes); "
                               f"the leader at {target} ({size_bytes} bytes)")  # fmt: skip
        child.wait(timeout=30)
        return {"mb_s": size_bytes / result["seconds"] / 1e6, **result}
    finally:
        if child is not None:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)


def catchup_figure(net: NetnsPair, runs: int, catchup_mib: int) -> dict[str, Any]:
    tp = f"{CATCHUP_TOPIC}/0"
    with replicated_pair(net) as pair:
        pair.start("a")  # the follower "b" never runs: each run's follower is a fresh child
        probe = LeaderProbe(pair)
        try:
            probe.create_topic(CATCHUP_TOPIC)
            fill(pair, probe, catchup_mib * MIB)
            target = probe.high_watermark(CATCHUP_TOPIC)  # alone: high watermark = log end
            wait_for("the leader's log end", lambda: probe.partition(tp).get("log_end_offset") == target)
        finally:
            probe.close()
        size_bytes = log_bytes(pair.root / "data-a" / f"{CATCHUP_TOPIC}-0", target)
        reference = pair.root / "reference.bin"
        write_file(reference, size_bytes)
        raw, raw_file, catchup, ratios, ratios_file = [], [], [], [], []
        for run in range(runs):
            os.sync()  # no writeback of the fill or of a previous run lands in a timed span
            raw.append(raw_sendfile_mb_s(reference, net))
            os.sync()
            # The same transfer with the receiver writing a new file: the disk-bound floor of any
            # replica (fresh page-cache pages cost more than the copy on this VM).
            raw_file.append(raw_sendfile_mb_s(reference, net, write_to=pair.root / "received.bin"))
            os.sync()
            catchup.append(catchup_run(net, pair, tp, target, size_bytes))
            ratios.append(catchup[-1]["mb_s"] / raw[-1])
            ratios_file.append(catchup[-1]["mb_s"] / raw_file[-1])
            print(f"catch-up run {run + 1}/{runs}: {catchup[-1]['mb_s']:.0f} MB/s "
                  f"(handshake {catchup[-1]['handshake_s'] * 1000:.0f} ms), raw sendfile {raw[-1]:.0f} MB/s, "
                  f"raw sendfile + write {raw_file[-1]:.0f} MB/s",
                  file=sys.stderr)  # fmt: skip
        return {
            "log_bytes": size_bytes,
            "log_records": target,
            "record_bytes": FILL_VALUE_BYTES,
            "catchup_mb_s": {**summary([c["mb_s"] for c in catchup]), "runs": catchup},
            "raw_sendfile_mb_s": {**summary(raw), "runs": raw},
            "ratio_catchup_to_raw": {**summary(ratios), "runs": ratios},
            "raw_sendfile_write_mb_s": {**summary(raw_file), "runs": raw_file},
            "ratio_catchup_to_raw_write": {**summary(ratios_file), "runs": ratios_file},
        }


# ---- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_replication")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=1_000_000, help="records per produce() run")
    parser.add_argument("--batch-records", type=int, default=5_000_000,
                        help="records per produce_batch() run; 0 skips it")  # fmt: skip
    parser.add_argument("--catchup-mib", type=int, default=1024, help="leader log size to catch up, MiB")
    parser.add_argument("--only", choices=("produce", "catchup"))
    parser.add_argument("--follower-child", metavar="JSON", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.follower_child is not None:
        follower_child(json.loads(args.follower_child))
        return 0

    reason = netns_available()
    if reason is not None:
        print(f"bench_replication needs network namespaces: {reason}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "name": "replication: acks=all / acks=1 produce, catch-up / raw sendfile (netns, veth)",
        "runs": args.runs,
        "producer_conf": PRODUCER_CONF,
        "broker_conf": EXTRA_BROKER_CONF.strip(),
        "value_bytes": VALUE_BYTES,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    with NetnsPair.create() as net:
        if args.only in (None, "produce"):
            result["produce"] = produce_figure(net, args.runs, args.records, args.batch_records)
        if args.only in (None, "catchup"):
            result["catchup"] = catchup_figure(net, args.runs, args.catchup_mib)
    print(json.dumps(result))
    for api in ("produce", "produce_batch"):
        fig = result.get("produce", {}).get(api)
        if fig:
            print(f"acks=all / acks=1, {api}(), {VALUE_BYTES} B: {spread(fig['ratio_all_to_1'])} "
                  f"(acks=1 {spread(fig['acks_1_records_s'], ',.0f')} records/s, "
                  f"acks=all {spread(fig['acks_all_records_s'], ',.0f')}) over {args.runs} runs",
                  file=sys.stderr)  # fmt: skip
    if "catchup" in result:
        fig = result["catchup"]
        catchup, raw = spread(fig["catchup_mb_s"], ".0f"), spread(fig["raw_sendfile_mb_s"], ".0f")
        ratio = spread(fig["ratio_catchup_to_raw"])
        print(f"catch-up / raw sendfile, {fig['log_bytes'] / MIB:.0f} MiB: {ratio} "
              f"(catch-up {catchup} MB/s, raw {raw}) over {args.runs} runs", file=sys.stderr)  # fmt: skip
        write_ratio, write_mb_s = (
            spread(fig["ratio_catchup_to_raw_write"]),
            spread(fig["raw_sendfile_write_mb_s"], ".0f"),
        )
        print(f"catch-up / raw sendfile + write to a file: {write_ratio} (raw + write {write_mb_s} MB/s)",
              file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
