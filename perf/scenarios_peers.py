"""Peer scenarios: what shmbroker is measured against, each with its best honest client settings.

Every scenario here is a real producer process and a real consumer process (multiprocessing spawn)
unless the peer has no such shape (the ceilings: one process). Each run is bounded by a record count
and by a time limit; servers are started fresh for every run (perf.servers) and stopped by pid.
Payloads are `size` bytes; throughput runs send one prebuilt payload object, latency runs build each
record with its scheduled send time in its first 8 bytes (perf.harness.stamp_payload).
"""

from __future__ import annotations

import asyncio
import os
import queue as queue_mod
import shutil
import tempfile
import time
from typing import Any

from perf.harness import (
    Ctl,
    Pacer,
    Result,
    percentiles_us,
    read_stamp,
    run_pair,
    run_single,
    scenario,
    stamp_payload,
)
from perf.servers import HOST, NatsServer, RedisServer, free_port

SIZES = (100, 1024, 65536)
LAT_SIZES = (100,)
LAT_RATES = (10_000, 50_000)
LAT_SECONDS = 2.0
LAT_TIMEOUT_S = 2 * LAT_SECONDS + 5.0  # a saturated peer stops here; its achieved rate shows it
LAT_SMOKE_SECONDS = 0.2
CHECK_EVERY = 4096  # records between deadline checks in tight loops


def _lat_result(ctl: Ctl, got: int, lat: list[int], rate: float | None, t_last: int) -> dict[str, Any]:
    out: dict[str, Any] = {"received": got, "t_last_ns": t_last, "timed_out": ctl.expired()}
    if rate is not None:
        d = percentiles_us(lat)
        d["offered_rate"] = float(rate)
        d["achieved_rate"] = got / max((t_last - ctl.t_go_ns) / 1e9, 1e-9)
        out["latency"] = d
    return out


# ---------------------------------------------------------------------------------------------
# Redis Streams


REDIS_STREAM = b"bench"
REDIS_PIPELINE = 1000
REDIS_COUNT = 1000


def _redis_client(port: int) -> Any:
    import redis

    # protocol=2 (RESP2) parsed by hiredis; one connection; bytes, no decoding.
    r = redis.Redis(host=HOST, port=port, protocol=2, decode_responses=False, socket_timeout=30)
    r.ping()
    return r


def redis_producer(ctl: Ctl, port: int, size: int, n: int, rate: float | None = None) -> dict[str, Any]:
    r = _redis_client(port)
    payload = b"x" * size
    mk = stamp_payload(size)
    ctl.ready()
    sent = 0
    pacer = Pacer(rate, ctl.t_go_ns) if rate else None
    while sent < n and not ctl.expired():
        if pacer is None:
            k = min(REDIS_PIPELINE, n - sent)
            pipe = r.pipeline(transaction=False)
            for _ in range(k):
                pipe.xadd(REDIS_STREAM, {b"d": payload})
        else:
            due = min(pacer.due(time.monotonic_ns()), n)
            if due <= sent:
                pacer.sleep_until(sent)
                continue
            k = min(due - sent, REDIS_PIPELINE)
            pipe = r.pipeline(transaction=False)
            for i in range(sent, sent + k):
                pipe.xadd(REDIS_STREAM, {b"d": mk(pacer.sched_ns(i))})
        pipe.execute()
        sent += k
    r.close()
    return {"sent": sent}


def redis_consumer(ctl: Ctl, port: int, size: int, n: int, rate: float | None = None) -> dict[str, Any]:
    r = _redis_client(port)
    ctl.ready()
    last = b"0-0"
    got = 0
    lat: list[int] = []
    while got < n and not ctl.expired():
        resp = r.xread({REDIS_STREAM: last}, count=REDIS_COUNT, block=100)
        if not resp:
            continue
        entries = resp[0][1]
        now = time.monotonic_ns()
        last = entries[-1][0]
        got += len(entries)
        if rate:
            lat.extend(now - read_stamp(fields[b"d"]) for _id, fields in entries)
    t_last = ctl.stop_clock()
    r.close()
    return _lat_result(ctl, got, lat, rate, t_last)


def _redis_run(name: str, aof: str, size: int, n: int, timeout_s: float, rate: float | None = None) -> Result:
    with RedisServer(aof=aof) as srv:  # type: ignore[arg-type]
        kw = {"port": srv.port, "size": size, "n": n, "rate": rate}
        return run_pair(
            name, size, n, timeout_s,
            producer=(redis_producer, kw), consumer=(redis_consumer, kw),
            servers={"redis-server": srv.pid}, extra={"aof": aof, "rate": rate},
        )  # fmt: skip


_REDIS_N = {100: 100_000, 1024: 80_000, 65536: 5_000}


@scenario("redis-streams-aof-off", sizes=SIZES, records=_REDIS_N, requires=("redis-server",))
def redis_aof_off(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """redis-py + hiredis (RESP2), one TCP connection per process. Producer: XADD bench * d <payload>
    in pipeline(transaction=False) of 1000 commands per round trip. Consumer: XREAD COUNT 1000 BLOCK 100
    from the last id seen. Server fresh per run: --save "" --appendonly no (nothing persisted)."""
    return _redis_run("redis-streams-aof-off", "off", size_bytes, n_records, timeout_s)


@scenario("redis-streams-aof-everysec", sizes=SIZES, records=_REDIS_N, requires=("redis-server",))
def redis_aof_everysec(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """As redis-streams-aof-off, server with --appendonly yes --appendfsync everysec (AOF written per
    command batch, fsync once a second: up to ~1 s of acknowledged writes lost on power failure)."""
    return _redis_run("redis-streams-aof-everysec", "everysec", size_bytes, n_records, timeout_s)


def _make_redis_lat(aof: str, rate: int) -> None:
    name = f"redis-streams-aof-{aof}-lat{rate // 1000}k"

    def run(size_bytes: int, n_records: int, timeout_s: float) -> Result:
        return _redis_run(name, aof, size_bytes, n_records, timeout_s, rate=rate)

    run.__doc__ = (
        f"Latency at a fixed offered rate of {rate} records/s (100 B), AOF {aof}. Producer sends the "
        "records that are due (scheduled send time stamped in the record) in one pipeline, at most "
        "1000, then sleeps until the next is due; consumer XREAD COUNT 1000 BLOCK 100, latency = "
        "receive time - scheduled send time per record."
    )
    scenario(
        name, sizes=LAT_SIZES, kind="latency", records={100: int(rate * LAT_SECONDS)},
        smoke_records={100: int(rate * LAT_SMOKE_SECONDS)}, requires=("redis-server",),
        timeout_s=LAT_TIMEOUT_S,
    )(run)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# NATS JetStream

NATS_STREAM = "bench"
NATS_SUBJECT = "bench.records"
NATS_FETCH = 1000


def _nats_window(size: int) -> int:
    return max(64, min(256, (32 << 20) // size))


def nats_producer(ctl: Ctl, url: str, size: int, n: int, rate: float | None = None) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        import nats

        nc = await nats.connect(url, max_reconnect_attempts=0, connect_timeout=10)
        js = nc.jetstream(publish_async_max_pending=_nats_window(size), timeout=30)
        payload = b"x" * size
        mk = stamp_payload(size)
        ctl.ready()
        sent = 0
        pacer = Pacer(rate, ctl.t_go_ns) if rate else None
        try:
            while sent < n and not ctl.expired():
                if pacer is not None:
                    due = min(pacer.due(time.monotonic_ns()), n)
                    if due <= sent:
                        wait = (pacer.sched_ns(sent) - time.monotonic_ns()) / 1e9
                        await asyncio.sleep(max(0.0, min(wait, 0.01)))
                        continue
                    for i in range(sent, due):
                        rec = mk(pacer.sched_ns(i))
                        await js.publish_async(NATS_SUBJECT, rec)
                    sent = due
                else:
                    end = min(n, sent + CHECK_EVERY)
                    for _ in range(sent, end):
                        await js.publish_async(NATS_SUBJECT, payload)
                    sent = end
            try:
                await asyncio.wait_for(js.publish_async_completed(), timeout=max(0.1, ctl.remaining()))
            except TimeoutError:
                pass  # time bound hit with acks outstanding: the consumer's count tells what arrived
        finally:
            await nc.close()
        return {"sent": sent}

    return asyncio.run(main())


def nats_consumer(ctl: Ctl, url: str, size: int, n: int, rate: float | None = None) -> dict[str, Any]:
    """Durable pull consumer, AckPolicy.ALL. Pull requests ({"batch": 1000, "expires": 0.5 s}) go to
    $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> with nc.publish and the batch arrives on an inbox
    subscription callback: the same protocol as PullSubscription.fetch, which in nats-py 2.16 awaits a
    task per message and runs at ~5k msgs/s on this machine (this path: ~60k/s)."""

    async def main() -> dict[str, Any]:
        import json

        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

        nc = await nats.connect(url, max_reconnect_attempts=0, connect_timeout=10)
        js = nc.jetstream(timeout=30)
        await js.add_stream(StreamConfig(name=NATS_STREAM, subjects=[NATS_SUBJECT], storage=StorageType.FILE))
        await js.add_consumer(
            NATS_STREAM,
            ConsumerConfig(durable_name="bench", ack_policy=AckPolicy.ALL, max_ack_pending=20 * NATS_FETCH),
        )
        st: dict[str, Any] = {"got": 0, "in_req": 0, "last": None}
        lat: list[int] = []
        batch_done = asyncio.Event()

        async def on_msg(m: Any) -> None:
            if not m.data and m.headers and m.headers.get("Status"):  # 404/408: request over
                batch_done.set()
                return
            if rate:
                lat.append(time.monotonic_ns() - read_stamp(m.data))
            st["got"] += 1
            st["in_req"] += 1
            st["last"] = m
            if st["in_req"] >= NATS_FETCH or st["got"] >= n:
                batch_done.set()

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)
        req = json.dumps({"batch": NATS_FETCH, "expires": 500_000_000}).encode()
        subj = f"$JS.API.CONSUMER.MSG.NEXT.{NATS_STREAM}.bench"
        ctl.ready()
        try:
            while st["got"] < n and not ctl.expired():
                batch_done.clear()
                st["in_req"] = 0
                await nc.publish(subj, req, reply=inbox)
                try:
                    await asyncio.wait_for(batch_done.wait(), timeout=2.0)
                except TimeoutError:
                    pass
                if st["last"] is not None:
                    await st["last"].ack()  # AckAll: one ack per batch, like an offset commit
                    st["last"] = None
            t_last = ctl.stop_clock()
        finally:
            await nc.close()
        return _lat_result(ctl, st["got"], lat, rate, t_last)

    return asyncio.run(main())


def _nats_run(name: str, size: int, n: int, timeout_s: float, rate: float | None = None) -> Result:
    with NatsServer() as srv:
        kw = {"url": srv.url, "size": size, "n": n, "rate": rate}
        return run_pair(
            name, size, n, timeout_s,
            producer=(nats_producer, kw), consumer=(nats_consumer, kw),
            servers={"nats-server": srv.pid}, extra={"window": _nats_window(size), "rate": rate},
        )  # fmt: skip


@scenario(
    "nats-jetstream-file", sizes=SIZES, records={100: 15_000, 1024: 12_000, 65536: 1_500},
    requires=("nats-server",),
)  # fmt: skip
def nats_jetstream(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """nats-py, one connection per process. Stream `bench`, file storage, default limits (server
    -js -sd <tmp>, fresh per run; JetStream's file store does not fsync per message). Producer:
    js.publish_async (acks awaited asynchronously) with publish_async_max_pending = 256 in
    flight (faster here than 4000), then waits for all acks. Consumer: durable pull consumer, AckPolicy.ALL,
    pull requests of batch 1000 (see nats_consumer: nats-py's fetch() itself is ~10x slower), one ack
    per batch (acks everything up to it, like an offset commit)."""
    return _nats_run("nats-jetstream-file", size_bytes, n_records, timeout_s)


def _make_nats_lat(rate: int) -> None:
    name = f"nats-jetstream-file-lat{rate // 1000}k"

    def run(size_bytes: int, n_records: int, timeout_s: float) -> Result:
        return _nats_run(name, size_bytes, n_records, timeout_s, rate=rate)

    run.__doc__ = (
        f"Latency at a fixed offered rate of {rate} records/s (100 B): the producer publish_async's each "
        "record when due (scheduled send time stamped in it); pull requests of batch 1000 deliver "
        "each message as it is stored; latency = receive time - scheduled send time."
    )
    scenario(
        name, sizes=LAT_SIZES, kind="latency", records={100: int(rate * LAT_SECONDS)},
        smoke_records={100: int(rate * LAT_SMOKE_SECONDS)}, requires=("nats-server",),
        timeout_s=LAT_TIMEOUT_S,
    )(run)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# raw pyzmq PUSH/PULL


def _zmq_hwm(msg_size: int) -> int:
    """High-water mark in messages: about 64 MiB queued per side, 1000 (libzmq's default) for small
    messages, at most 100000, at least 64 (so 1 MiB batches queue 64 MiB, not 1 GiB)."""
    return max(64 if msg_size > 65536 else 1000, min(100_000, (64 << 20) // msg_size))


def zmq_consumer(ctl: Ctl, endpoint: str, size: int, n: int, per_msg: int = 1) -> dict[str, Any]:
    import zmq

    zctx = zmq.Context()
    s = zctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, _zmq_hwm(size * per_msg))
    s.setsockopt(zmq.RCVTIMEO, 100)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(endpoint)
    ctl.ready()
    got = 0
    copy = size * per_msg < 65536
    recv = s.recv
    try:
        while got < n and not ctl.expired():
            try:
                if per_msg == 1:
                    for _ in range(min(CHECK_EVERY, n - got)):
                        recv(0, copy)  # positional: keyword calls cost ~10% at 100 B
                        got += 1
                else:
                    f = recv(0, False)
                    got += f.buffer.nbytes // size
            except zmq.Again:
                pass
        t_last = ctl.stop_clock()
    finally:
        s.close(0)
        zctx.term()
    return {"received": got, "t_last_ns": t_last, "timed_out": got < n}


def zmq_producer(ctl: Ctl, endpoint: str, size: int, n: int, per_msg: int = 1) -> dict[str, Any]:
    import zmq

    zctx = zmq.Context()
    s = zctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, _zmq_hwm(size * per_msg))
    s.setsockopt(zmq.SNDTIMEO, 100)
    s.setsockopt(zmq.LINGER, 2000)
    s.connect(endpoint)
    s.poll(10_000, zmq.POLLOUT)  # a PUSH socket is writable once a peer finished its handshake
    payload = b"x" * size
    batch = [payload] * per_msg
    copy = size * per_msg < 65536
    send = s.send
    ctl.ready()
    sent = 0
    try:
        while sent < n and not ctl.expired():
            try:
                if per_msg == 1:
                    for _ in range(min(CHECK_EVERY, n - sent)):
                        send(payload, 0, copy)
                        sent += 1
                else:
                    k = min(per_msg, n - sent)
                    # copy=True: with zero-copy, frames wait for pyzmq's gc thread to release them, and
                    # under load the producer's RSS grew to ~1.9 GiB; one more 1 MiB memcpy bounds it.
                    send(b"".join(batch[:k]), 0, True)
                    sent += k
            except zmq.Again:
                pass
    finally:
        s.close(2000)
        zctx.term()
    return {"sent": sent}


def _zmq_run(name: str, transport: str, size: int, n: int, timeout_s: float, per_msg: int) -> Result:
    tmp = tempfile.mkdtemp(prefix="perf-zmq-")
    try:
        ep = f"ipc://{tmp}/s" if transport == "ipc" else f"tcp://{HOST}:{free_port()}"
        kw = {"endpoint": ep, "size": size, "n": n, "per_msg": per_msg}
        return run_pair(
            name, size, n, timeout_s, producer=(zmq_producer, kw), consumer=(zmq_consumer, kw),
            extra={"records_per_message": per_msg, "hwm": _zmq_hwm(size * per_msg)},
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _batch_k(size: int) -> int:
    return max(1, min(1000, (1 << 20) // size))


@scenario("zmq-pushpull-ipc", sizes=SIZES, records={100: 1_000_000, 1024: 500_000, 65536: 20_000})
def zmq_ipc(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """pyzmq PUSH (connect) -> PULL (bind) over ipc://, one message per record, nothing stored.
    SNDHWM/RCVHWM ~ 64 MiB of messages (see _zmq_hwm); copy=True below 64 KiB, copy=False at 64 KiB."""
    return _zmq_run("zmq-pushpull-ipc", "ipc", size_bytes, n_records, timeout_s, 1)


@scenario("zmq-pushpull-tcp", sizes=SIZES, records={100: 1_000_000, 1024: 500_000, 65536: 20_000})
def zmq_tcp(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """As zmq-pushpull-ipc over tcp://127.0.0.1."""
    return _zmq_run("zmq-pushpull-tcp", "tcp", size_bytes, n_records, timeout_s, 1)


@scenario("zmq-batch1000-ipc", sizes=SIZES, records={100: 10_000_000, 1024: 2_000_000, 65536: 30_000})
def zmq_batch_ipc(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """pyzmq PUSH/PULL over ipc://, records joined per message (b"".join of min(1000, 1 MiB / size)
    records: 1000 at 100 B and 1 KiB, 16 at 64 KiB); the consumer counts records by length and does not
    split them: a transport ceiling. Sent with copy=True (bounded memory), received with copy=False."""
    return _zmq_run("zmq-batch1000-ipc", "ipc", size_bytes, n_records, timeout_s, _batch_k(size_bytes))


@scenario("zmq-batch1000-tcp", sizes=SIZES, records={100: 10_000_000, 1024: 2_000_000, 65536: 30_000})
def zmq_batch_tcp(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """As zmq-batch1000-ipc over tcp://127.0.0.1."""
    return _zmq_run("zmq-batch1000-tcp", "tcp", size_bytes, n_records, timeout_s, _batch_k(size_bytes))


# ---------------------------------------------------------------------------------------------
# faster-fifo and multiprocessing.Queue

FIFO_BYTES = 64 << 20


def fifo_producer(ctl: Ctl, q: Any, size: int, n: int) -> dict[str, Any]:
    from faster_fifo import Full

    payload = b"x" * size
    k = max(1, min(1000, (1 << 20) // size))
    ctl.ready()
    sent = 0
    while sent < n and not ctl.expired():
        m = min(k, n - sent)
        try:
            q.put_many([payload] * m, block=True, timeout=0.1)
            sent += m
        except Full:
            pass
    return {"sent": sent}


def fifo_consumer(ctl: Ctl, q: Any, size: int, n: int) -> dict[str, Any]:
    from faster_fifo import Empty

    ctl.ready()
    got = 0
    while got < n and not ctl.expired():
        try:
            got += len(q.get_many(block=True, timeout=0.1, max_messages_to_get=1000))
        except Empty:
            pass
    return {"received": got, "t_last_ns": ctl.stop_clock(), "timed_out": got < n}


@scenario("faster-fifo", sizes=SIZES, records={100: 200_000, 1024: 100_000, 65536: 5_000})
def faster_fifo_run(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """faster_fifo.Queue(max_size_bytes=64 MiB) shared by two spawned processes; producer put_many
    of min(1000, 1 MiB / size) records, consumer get_many(max_messages_to_get=1000). Records are
    pickled bytes objects (the library's own serialization)."""
    import faster_fifo

    q = faster_fifo.Queue(max_size_bytes=FIFO_BYTES)
    try:
        kw = {"q": q, "size": size_bytes, "n": n_records}
        return run_pair("faster-fifo", size_bytes, n_records, timeout_s,
                        producer=(fifo_producer, kw), consumer=(fifo_consumer, kw))  # fmt: skip
    finally:
        q.close()


def mpq_producer(ctl: Ctl, q: Any, size: int, n: int) -> dict[str, Any]:
    payload = b"x" * size
    put = q.put
    ctl.ready()
    sent = 0
    while sent < n and not ctl.expired():
        for _ in range(min(CHECK_EVERY, n - sent)):
            put(payload)
            sent += 1
    return {"sent": sent}


def mpq_consumer(ctl: Ctl, q: Any, size: int, n: int) -> dict[str, Any]:
    get = q.get
    ctl.ready()
    got = 0
    while got < n and not ctl.expired():
        try:
            get(timeout=0.1)
            got += 1
        except queue_mod.Empty:
            pass
    return {"received": got, "t_last_ns": ctl.stop_clock(), "timed_out": got < n}


@scenario("mp-queue", sizes=SIZES, records={100: 50_000, 1024: 40_000, 65536: 10_000})
def mp_queue(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """multiprocessing.Queue() (spawn context, unbounded: put never blocks, its feeder thread pickles
    and writes to the pipe), one put / get per record."""
    import multiprocessing as mp

    q = mp.get_context("spawn").Queue()
    try:
        kw = {"q": q, "size": size_bytes, "n": n_records}
        return run_pair("mp-queue", size_bytes, n_records, timeout_s,
                        producer=(mpq_producer, kw), consumer=(mpq_consumer, kw))  # fmt: skip
    finally:
        q.close()
        q.cancel_join_thread()


# ---------------------------------------------------------------------------------------------
# ceilings (one process)

CHUNK = 1 << 20


def oswrite_child(ctl: Ctl, size: int, n: int, fsync: bool) -> dict[str, Any]:
    total = size * n
    buf = os.urandom(CHUNK)
    d = tempfile.mkdtemp(prefix="perf-oswrite-")
    path = os.path.join(d, "seg.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    done = 0
    try:
        ctl.ready()
        while done < total and not ctl.expired():
            for _ in range(64):
                if done >= total:
                    break
                done += os.write(fd, buf[: min(CHUNK, total - done)])
        if fsync:
            os.fsync(fd)
        t_last = ctl.stop_clock()
    finally:
        os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
    return {"received": done // size, "t_last_ns": t_last, "timed_out": done < total}


def memcpy_child(ctl: Ctl, size: int, n: int) -> dict[str, Any]:
    total = size * n
    src = memoryview(os.urandom(CHUNK))
    dst_len = 64 * CHUNK  # larger than any L3 here: measures memory, not cache
    dst = memoryview(bytearray(dst_len))
    done = 0
    off = 0
    ctl.ready()
    while done < total and not ctl.expired():
        for _ in range(256):
            k = min(CHUNK, total - done)
            if k <= 0:
                break
            dst[off : off + k] = src[:k]
            done += k
            off = (off + CHUNK) % dst_len
    return {"received": done // size, "t_last_ns": ctl.stop_clock(), "timed_out": done < total}


# 512 MiB, except at 64 KiB: the bytes of a shmbroker-local run (20000 records, 1.25 GiB), since #3's
# figure compares the broker with an os.write "of the same bytes".
_WRITE_N = {s: (512 << 20) // s for s in SIZES} | {65536: 20_000}


@scenario("ceiling-os-write", sizes=SIZES, records=_WRITE_N)
def ceiling_os_write(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """One process: sequential os.write of 1 MiB chunks (n_records * size bytes: 512 MiB in a full run,
    1.25 GiB at 64 KiB) into a new file in a temp dir (fresh page cache), no fsync; records/s =
    bytes / size."""
    return run_single("ceiling-os-write", size_bytes, n_records, timeout_s,
                      oswrite_child, {"size": size_bytes, "n": n_records, "fsync": False})  # fmt: skip


@scenario("ceiling-os-write-fsync", sizes=SIZES, records=_WRITE_N)
def ceiling_os_write_fsync(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """As ceiling-os-write plus one fsync at the end (inside the timed window)."""
    return run_single("ceiling-os-write-fsync", size_bytes, n_records, timeout_s,
                      oswrite_child, {"size": size_bytes, "n": n_records, "fsync": True})  # fmt: skip


@scenario("ceiling-memcpy", sizes=SIZES, records={s: (4 << 30) // s for s in SIZES})
def ceiling_memcpy(size_bytes: int, n_records: int, timeout_s: float) -> Result:
    """One process: memoryview slice assignment of 1 MiB chunks into a 64 MiB bytearray, cycling
    (4 GiB per full run); records/s = bytes / size."""
    return run_single("ceiling-memcpy", size_bytes, n_records, timeout_s,
                      memcpy_child, {"size": size_bytes, "n": n_records})  # fmt: skip


for _aof in ("off", "everysec"):
    for _rate in LAT_RATES:
        _make_redis_lat(_aof, _rate)
for _rate in LAT_RATES:
    _make_nats_lat(_rate)
