"""``shmbroker ...``: the command line for people. Each subcommand is a thin shell over the client or
the broker; exit codes: 0 ok, 1 a typed error (printed as ``error: NAME: message``), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shmbroker.config import DEFAULT_DATA_DIR, DEFAULT_LISTENER

OFFSET_WORDS = {"beginning": -2, "earliest": -2, "end": -1, "latest": -1}


def _client_conf(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": args.bootstrap}
    if getattr(args, "transport", None):
        conf["shmbroker.transport"] = args.transport
    conf.update({k: v for k, v in extra.items() if v is not None})
    return conf


class _Progress:
    """A one-line counter on stderr, once a second, only when stderr is a terminal."""

    def __init__(self, what: str) -> None:
        self.what, self.count = what, 0
        self._tty = sys.stderr.isatty()
        self._started = self._last = time.monotonic()

    def add(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self._tty and now - self._last >= 1.0:
            rate = self.count / max(1e-9, now - self._started)
            print(f"\r{self.what}: {self.count} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
            self._last = now

    def done(self) -> None:
        if self._tty and self._last != self._started:
            print(file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from shmbroker.workers import forkserver

    forkserver.start()  # first: its preload (~0.3 s) runs while this process imports the broker
    from shmbroker.config import load_broker_config
    from shmbroker.workers.service import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_broker_config(args.config, data_dir=args.data_dir, listeners=args.listen)
    return serve(config)


def cmd_demo(args: argparse.Namespace) -> int:
    """`make run`: serve on the defaults, show one round trip, keep serving until Ctrl-C."""
    import logging

    from shmbroker.workers import forkserver

    forkserver.start()  # as in cmd_serve
    from shmbroker.config import load_broker_config
    from shmbroker.workers.service import serve

    logging.basicConfig(level=logging.WARNING)
    config = load_broker_config(None, data_dir=args.data_dir, listeners=args.listen)

    def show() -> None:
        from shmbroker import AdminClient, Consumer, NewTopic, Producer, TopicPartition

        try:
            conf = {"bootstrap.servers": config.listeners}
            admin = AdminClient(conf)
            if "demo" not in admin.list_topics().topics:
                admin.create_topics([NewTopic("demo", num_partitions=1)])["demo"].result()
            admin.close()
            producer = Producer({**conf, "linger.ms": 0})
            for i in range(3):
                producer.produce("demo", f"hello {i} from make run".encode(), partition=0)
            producer.flush(10)
            producer.close()
            consumer = Consumer(conf)
            consumer.assign([TopicPartition("demo", 0, -1001)])
            _low, high = consumer.get_watermark_offsets(TopicPartition("demo", 0))
            consumer.seek(TopicPartition("demo", 0, max(0, high - 3)))
            for _ in range(3):
                msg = consumer.poll(5)
                if msg is not None:
                    print(f"  consumed demo[0]@{msg.offset()}: {msg.value()!r}", flush=True)
            consumer.close()
            print(
                "\nThe broker keeps serving. In another terminal (after `. .venv/bin/activate`):\n"
                "  echo hello | shmbroker produce demo\n"
                "  shmbroker consume demo --from-beginning --max-messages 5\n"
                "  shmbroker topics list ; shmbroker status\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
        except Exception as exc:  # the demo must not take the broker down
            print(f"demo round trip failed: {exc}", file=sys.stderr, flush=True)

    return serve(config, ready=lambda: threading.Thread(target=show, daemon=True).start())


def cmd_topics(args: argparse.Namespace) -> int:
    from shmbroker import AdminClient, NewTopic

    admin = AdminClient(_client_conf(args))
    try:
        if args.action == "create":
            config = dict(kv.split("=", 1) for kv in args.config or [])
            admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions, config=config)])[
                args.topic
            ].result()
            print(f"created topic {args.topic} with {args.partitions} partitions")
        elif args.action == "delete":
            admin.delete_topics([args.topic])[args.topic].result()
            print(f"deleted topic {args.topic}")
        elif args.action == "list":
            for name, meta in sorted(admin.list_topics().topics.items()):
                print(f"{name}\t{len(meta.partitions)} partitions")
        elif args.action == "describe":
            rows = admin.describe_partitions(args.topic)
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                print("partition  state     start_offset  end_offset  high_watermark  pid")
                for r in rows:
                    print(
                        f"{r['partition']:>9}  {r['state']:<8} {r['log_start_offset']:>13}"
                        f" {r['log_end_offset']:>11}"
                        f" {r['high_watermark']:>15}  {r['pid']}"
                    )
    finally:
        admin.close()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from shmbroker import KafkaError, Producer

    failures: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    producer = Producer(
        _client_conf(
            args, acks=args.acks, **{"compression.type": args.compression, "linger.ms": args.linger_ms}
        )
    )
    progress = _Progress("produced")
    for line in sys.stdin.buffer:
        line = line.rstrip(b"\n")
        key = None
        if args.key_separator:
            sep = args.key_separator.encode()
            if sep in line:
                key, line = line.split(sep, 1)
        while True:
            try:
                producer.produce(args.topic, line, key=key, partition=args.partition, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        progress.add()
        producer.poll(0)
    left = producer.flush(30)
    producer.close()
    progress.done()
    if failures or left:
        print(
            f"error: {len(failures)} records failed ({failures[0] if failures else ''}), {left} undelivered",
            file=sys.stderr,
        )
        return 1
    print(f"produced {progress.count} records to {args.topic}", file=sys.stderr)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from shmbroker import Consumer, TopicPartition

    consumer = Consumer(
        _client_conf(args, **{"auto.offset.reset": "earliest" if args.from_beginning else "latest"})
    )
    try:
        if args.partition is not None:
            parts = [args.partition]
        else:
            meta = consumer.list_topics(args.topic).topics[args.topic]
            if meta.error is not None:
                print(f"error: {meta.error.str()}", file=sys.stderr)
                return 1
            parts = sorted(meta.partitions)
        offset = -1001 if args.offset is None else OFFSET_WORDS.get(args.offset)
        if offset is None:
            offset = int(args.offset)
        consumer.assign([TopicPartition(args.topic, p, offset) for p in parts])
        seen = 0
        deadline = None if args.timeout_s is None else time.monotonic() + args.timeout_s
        out = sys.stdout.buffer
        while args.max_messages is None or seen < args.max_messages:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            msg = consumer.poll(0.5 if remaining is None else min(0.5, remaining))
            if msg is None:
                continue
            if args.print_key:
                out.write((msg.key() or b"") + b"\t")
            if args.print_offset:
                out.write(f"{msg.partition()}:{msg.offset()}\t".encode())
            out.write((msg.value() or b"") + b"\n")
            out.flush()
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from shmbroker import AdminClient

    admin = AdminClient(_client_conf(args))
    try:
        admin.status()  # CPU% and rates are measured between two samples
        time.sleep(args.interval_s)
        status = admin.status()
    finally:
        admin.close()
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"data dir {status['data_dir']}, listening on {status['listeners']}")
    print("process                              pid   cpu%    rss MiB    uss MiB")
    for p in status["processes"]:
        print(
            f"{p['role']:<34} {p['pid']:>6} {p.get('cpu_percent', 0):>6.1f}"
            f" {p.get('rss_bytes', 0) / 2**20:>9.1f} {p.get('uss_bytes', 0) / 2**20:>10.1f}"
        )
    print(
        "partition                  state     start        end   high_wm"
        "   records_in  errors  lanes   records/s"
    )
    for r in status["partitions"]:
        name = f"{r['topic']}-{r['partition']}"
        rate = r.get("records_per_s")
        print(
            f"{name:<26} {r['state']:<8} {r['log_start_offset']:>6} {r['log_end_offset']:>10}"
            f" {r['high_watermark']:>9}"
            f" {r.get('records_in', 0):>12} {r.get('errors', 0):>7} {r['lanes']:>6}"
            f" {'' if rate is None else f'{rate:>11,.0f}'}"
        )
    _print_replication(status)
    return 0


def _print_replication(status: dict[str, Any]) -> None:
    replication = status.get("replication")
    if not replication:
        return
    print(
        f"replication: {status.get('role')} at leader epoch {status.get('leader_epoch')}"
        + (f", following {replication.get('leader') or '?'}" if status.get("role") == "follower" else "")
        + (
            f" ({'connected' if replication.get('connected') else 'not connected'})"
            if status.get("role") == "follower"
            else ""
        )
    )
    print(
        "partition                  epoch        end   high_wm  in-sync set / follower lag (records, bytes)"
    )
    for tp, r in sorted(replication.get("partitions", {}).items()):
        followers = r.get("followers", {})
        lag = ", ".join(
            f"{name}: {f['lag_records']} rec {f['lag_bytes']} B{'' if f['in_sync'] else ' (out of sync)'}"
            for name, f in sorted(followers.items())
        )
        isr = ",".join(r.get("isr", []))
        print(
            f"{tp.replace('/', '-'):<26} {r.get('leader_epoch', -1):>5} {r['log_end_offset']:>10}"
            f" {r['high_watermark']:>9}  {isr} {lag}".rstrip()
        )


def cmd_promote(args: argparse.Namespace) -> int:
    from shmbroker import AdminClient

    admin = AdminClient(_client_conf(args))
    try:
        epoch = admin.promote()
    finally:
        admin.close()
    print(f"promoted: this broker now leads at leader epoch {epoch}")
    return 0


# -- consumer groups (like kafka-consumer-groups) ------------------------------------------------------
def _group_call(conn: Any, api_name: str, body: dict[str, Any]) -> dict[str, Any]:
    """One group request, retrying COORDINATOR_NOT_AVAILABLE (the coordinator restarting) for ~10 s."""
    from shmbroker.errors import CoordinatorNotAvailableError
    from shmbroker.net.protocol import ApiKey

    deadline = time.monotonic() + 10
    while True:
        try:
            return dict(conn.call(ApiKey[api_name], body).body)
        except CoordinatorNotAvailableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def _end_offsets(conn: Any, topic: str, partition: int, timestamp: int = -1) -> dict[str, Any]:
    from shmbroker.net.protocol import ApiKey

    body = {"topic": topic, "partition": partition, "timestamp": timestamp}
    return dict(conn.call(ApiKey.LIST_OFFSETS, body).body)


def describe_group(conn: Any, group_id: str) -> dict[str, Any]:
    """The group, its members and, per partition, committed offset, log end (high watermark) and lag."""
    desc = _group_call(conn, "DESCRIBE_GROUP", {"group_id": group_id})
    committed = {
        (t, p): o
        for t, p, o, _m in _group_call(conn, "OFFSET_FETCH", {"group_id": group_id, "partitions": None})[
            "offsets"
        ]
    }
    owner = {(t, p): m["member_id"] for m in desc.get("members", []) for t, p in m["assignment"]}
    rows = []
    for topic, partition in sorted(committed.keys() | owner.keys()):
        end = int(_end_offsets(conn, topic, partition)["high_watermark"])
        offset = committed.get((topic, partition), -1)
        rows.append(
            {
                "topic": topic,
                "partition": partition,
                "committed_offset": offset if offset >= 0 else None,
                "log_end_offset": end,
                "lag": end - offset if offset >= 0 else None,
                "member_id": owner.get((topic, partition)),
            }
        )
    return {
        **{k: desc.get(k) for k in ("group_id", "state", "protocol_name", "generation_id", "leader_id")},
        "members": desc.get("members", []),
        "partitions": rows,
    }


def reset_plan(conn: Any, args: argparse.Namespace, partitions: int) -> list[tuple[int, int, int]]:
    """[(partition, current committed or -1, new offset)] for every partition of ``args.topic``."""
    from datetime import datetime

    committed = {
        (t, p): o
        for t, p, o, _m in _group_call(conn, "OFFSET_FETCH", {"group_id": args.group, "partitions": None})[
            "offsets"
        ]
    }
    plan = []
    for p in range(partitions):
        info = _end_offsets(conn, args.topic, p)
        start, end = int(info["log_start_offset"]), int(info["high_watermark"])
        if args.to_earliest:
            new = start
        elif args.to_latest:
            new = end
        elif args.to_offset is not None:
            new = min(max(args.to_offset, start), end)
        else:
            stamp = datetime.fromisoformat(args.to_datetime.replace("Z", "+00:00"))
            found = int(_end_offsets(conn, args.topic, p, int(stamp.timestamp() * 1000)).get("offset", -1))
            new = end if found < 0 else found
        plan.append((p, committed.get((args.topic, p), -1), new))
    return plan


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def cmd_groups(args: argparse.Namespace) -> int:
    from shmbroker import AdminClient
    from shmbroker.client.connection import Connection, bootstrap_address

    conn = Connection(bootstrap_address({"bootstrap.servers": args.bootstrap}), request_timeout_s=10)
    try:
        if args.action == "list":
            groups = _group_call(conn, "LIST_GROUPS", {})["groups"]
            if args.json:
                print(json.dumps(groups, indent=1))
            for g in [] if args.json else groups:
                print(f"{g['group_id']}\t{g['state']}\t{g.get('members', '')}".rstrip())
            return 0
        if not args.group:
            print("error: give a GROUP", file=sys.stderr)
            return 2
        if args.action == "describe":
            info = describe_group(conn, args.group)
            if args.json:
                print(json.dumps(info, indent=1))
                return 0
            print(
                f"group {info['group_id']}: {info['state']}, protocol {info['protocol_name'] or '-'}, "
                f"generation {info['generation_id']}, {len(info['members'])} members"
            )
            for m in info["members"]:
                parts = ",".join(f"{t}-{p}" for t, p in m["assignment"]) or "-"
                print(
                    f"  member {m['member_id']} (client {m['client_id']}, "
                    f"instance {m['group_instance_id'] or '-'}): {parts}"
                )
            print(
                f"{'TOPIC':<24} {'PARTITION':>9} {'CURRENT-OFFSET':>15} {'LOG-END-OFFSET':>15} "
                f"{'LAG':>10}  MEMBER"
            )
            for r in info["partitions"]:
                print(
                    f"{r['topic']:<24} {r['partition']:>9} {_dash(r['committed_offset']):>15} "
                    f"{r['log_end_offset']:>15}"
                    f" {_dash(r['lag']):>10}  {r['member_id'] or '-'}"
                )
            return 0
        if args.action == "delete":
            _group_call(conn, "DELETE_GROUP", {"group_id": args.group})
            print(f"deleted group {args.group}")
            return 0
        # reset-offsets
        if (
            not args.topic
            or sum(
                bool(x)
                for x in (args.to_earliest, args.to_latest, args.to_offset is not None, args.to_datetime)
            )
            != 1
        ):
            print(
                "error: reset-offsets needs --topic and one of "
                "--to-earliest/--to-latest/--to-offset/--to-datetime",
                file=sys.stderr,
            )
            return 2
        admin = AdminClient({"bootstrap.servers": args.bootstrap})
        try:
            meta = admin.list_topics(args.topic).topics[args.topic]
        finally:
            admin.close()
        if meta.error is not None:
            print(f"error: {meta.error.str()}", file=sys.stderr)
            return 1
        plan = reset_plan(conn, args, len(meta.partitions))
        print(f"{'TOPIC':<24} {'PARTITION':>9} {'CURRENT-OFFSET':>15} {'NEW-OFFSET':>11}")
        for p, old, new in plan:
            print(f"{args.topic:<24} {p:>9} {old if old >= 0 else '-':>15} {new:>11}")
        if not args.execute:
            print("(plan only: add --execute to apply it; the group must have no active members)")
            return 0
        _group_call(
            conn,
            "RESET_OFFSETS",
            {"group_id": args.group, "offsets": [[args.topic, p, n] for p, _o, n in plan]},
        )
        print(f"reset {len(plan)} offsets of group {args.group}")
        return 0
    finally:
        conn.close()


def cmd_dump_log(args: argparse.Namespace, rest: list[str]) -> int:
    from shmbroker.disk import dumplog

    return dumplog.main(rest)


def cmd_recover_log(args: argparse.Namespace, rest: list[str]) -> int:
    from shmbroker.disk import dumplog

    return dumplog.recover_main(rest)


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "replication":
        from shmbroker.net.replication import write_key

        path = args.dir / f"{args.name}.key"
        write_key(path, args.name)
        print(
            f"replication key {path} (mode 0600): the follower sets replication.secret.key.file to it; "
            "copy it into the leader's replication.allowed.keys.dir"
        )
        return 0
    from shmbroker.net.auth import generate_keypair

    public, secret = generate_keypair(args.dir, args.name)
    print(f"public key {public} (give it to the other side), secret key {secret} (keep it, mode 0600)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmbroker", description="A Kafka-class log broker for one big host."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def client(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--bootstrap",
            "--bootstrap-server",
            default=DEFAULT_LISTENER,
            help="broker address (bootstrap.servers)",
        )
        p.add_argument(
            "--transport", choices=("auto", "shm", "zmq"), help="force the data path (shmbroker.transport)"
        )

    p = sub.add_parser("serve", help="run the broker")
    p.add_argument(
        "--data-dir", type=Path, default=None, help=f"data directory (default ./{DEFAULT_DATA_DIR})"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="TOML file with a [broker] table of Kafka-named keys"
    )
    p.add_argument("--listen", default=None, help=f"listener address (default {DEFAULT_LISTENER})")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="serve on the defaults and show a produce/consume round trip (make run)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--listen", default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("topics", help="create, list, describe or delete topics")
    p.add_argument("action", choices=("create", "list", "describe", "delete"))
    p.add_argument("topic", nargs="?")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument(
        "--config", action="append", metavar="KEY=VALUE", help="topic config, Kafka's keys (repeatable)"
    )
    p.add_argument("--json", action="store_true")
    client(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("produce", help="produce lines from stdin, one record per line")
    p.add_argument("topic")
    p.add_argument("--key-separator", default=None, help="split each line into key and value at this string")
    p.add_argument("--partition", type=int, default=-1)
    p.add_argument("--acks", default="1", choices=("0", "1", "all", "-1"))
    p.add_argument("--compression", default="none", choices=("none", "gzip", "snappy", "lz4", "zstd"))
    p.add_argument("--linger-ms", type=int, default=5)
    client(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("consume", help="print records, one value per line")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--partition", type=int, default=None)
    p.add_argument("--offset", default=None, help="an offset, or beginning/end")
    p.add_argument("--max-messages", type=int, default=None)
    p.add_argument("--timeout-s", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--print-key", action="store_true")
    p.add_argument("--print-offset", action="store_true")
    client(p)
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser(
        "keys", help="CURVE key pairs for the listener and its clients; secrets for replication peers"
    )
    p.add_argument("action", choices=("generate", "replication"))
    p.add_argument(
        "name", help="generate: writes NAME.key (public) and NAME.key_secret (0600); replication: NAME.key"
    )
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write them")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("promote", help="make this follower broker the leader, with a new leader epoch")
    client(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("status", help="processes, CPU, memory, per-partition offsets, rates and counters")
    p.add_argument("--json", action="store_true")
    p.add_argument("--interval-s", type=float, default=1.0, help="sampling interval for CPU%% and rates")
    client(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("groups", help="consumer groups: list, describe (lag), reset-offsets, delete")
    p.add_argument("action", choices=("list", "describe", "reset-offsets", "delete"))
    p.add_argument("group", nargs="?")
    p.add_argument("--topic", default=None)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--to-earliest", action="store_true")
    how.add_argument("--to-latest", action="store_true")
    how.add_argument("--to-offset", type=int, default=None)
    how.add_argument("--to-datetime", default=None, help="ISO 8601, e.g. 2026-01-31T12:00:00Z")
    p.add_argument("--execute", action="store_true", help="apply the reset (without it, only print the plan)")
    p.add_argument("--json", action="store_true")
    client(p)
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser(
        "dump-log", help="print the batches of segment files (like kafka-dump-log)", add_help=False
    )
    p.set_defaults(func=cmd_dump_log, passthrough=True)
    p = sub.add_parser("recover-log", help="run recovery on a partition directory", add_help=False)
    p.set_defaults(func=cmd_recover_log, passthrough=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shmbroker.client.types import KafkaException
    from shmbroker.errors import BrokerError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if getattr(args, "passthrough", False):
            return int(args.func(args, rest))
        return int(args.func(args))
    except KafkaException as exc:
        print(f"error: {exc.args[0].name()}: {exc.args[0].str()}", file=sys.stderr)
        return 1
    except BrokerError as exc:
        print(f"error: {exc.kafka_name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
