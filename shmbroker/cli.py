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

    from shmbroker.config import load_broker_config
    from shmbroker.workers.service import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_broker_config(args.config, data_dir=args.data_dir, listeners=args.listen)
    return serve(config)


def cmd_demo(args: argparse.Namespace) -> int:
    """`make run`: serve on the defaults, show one round trip, keep serving until Ctrl-C."""
    import logging

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
                        f"{r['partition']:>9}  {r['state']:<8} {r['log_start_offset']:>13} {r['log_end_offset']:>11}"
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
            f"{p['role']:<34} {p['pid']:>6} {p.get('cpu_percent', 0):>6.1f} {p.get('rss_bytes', 0) / 2**20:>9.1f}"
            f" {p.get('uss_bytes', 0) / 2**20:>10.1f}"
        )
    print("partition                  state     start        end   high_wm   records_in  errors  lanes   records/s")
    for r in status["partitions"]:
        name = f"{r['topic']}-{r['partition']}"
        rate = r.get("records_per_s")
        print(
            f"{name:<26} {r['state']:<8} {r['log_start_offset']:>6} {r['log_end_offset']:>10} {r['high_watermark']:>9}"
            f" {r.get('records_in', 0):>12} {r.get('errors', 0):>7} {r['lanes']:>6}"
            f" {'' if rate is None else f'{rate:>11,.0f}'}"
        )
    return 0


def cmd_dump_log(args: argparse.Namespace, rest: list[str]) -> int:
    from shmbroker.disk import dumplog

    return dumplog.main(rest)


def cmd_recover_log(args: argparse.Namespace, rest: list[str]) -> int:
    from shmbroker.disk import dumplog

    return dumplog.recover_main(rest)


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

    p = sub.add_parser("status", help="processes, CPU, memory, per-partition offsets, rates and counters")
    p.add_argument("--json", action="store_true")
    p.add_argument("--interval-s", type=float, default=1.0, help="sampling interval for CPU%% and rates")
    client(p)
    p.set_defaults(func=cmd_status)

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
