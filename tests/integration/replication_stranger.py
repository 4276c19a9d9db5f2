"""A stranger on the replication channel, run inside a test namespace by test_replication.py:
``python -m tests.integration.replication_stranger HOST:PORT KEYS_DIR LEGIT_KEY_FILE``.
Prints one JSON object: what each attempt got back."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from shmbroker.errors import BrokerError
from shmbroker.net import replication as wire
from shmbroker.net.replication import Kind
from shmbroker.workers.replicator import FrameReader, hello, split_address


def attempt(address: str, action: str, keys: Path, legit_key: str) -> str:
    try:
        with socket.create_connection(split_address(address), timeout=5) as sock:
            reader = FrameReader(sock)
            if action == "garbage":
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
                return repr(sock.recv(100))  # b"": the leader hung up without a word
            if action == "oversize":
                sock.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, Kind.HELLO, 2**31, 0))
                return repr(sock.recv(100))
            if action == "unknown-key":
                wire.write_key(keys / "mallory.key", "mallory")
                hello(sock, reader, node="mallory", purpose="follow", key_file=str(keys / "mallory.key"))
            elif action == "no-key":
                hello(sock, reader, node="mallory", purpose="follow", key_file="")
            elif action == "future-epoch":
                hello(sock, reader, node="impostor", purpose="follow", key_file=legit_key)
                sock.sendall(wire.encode(Kind.FOLLOW, {"epoch": 99, "partitions": {}}))
                reader.read()
            return "accepted"
    except BrokerError as exc:
        return f"{exc.kafka_name}"
    except OSError as exc:
        return f"closed: {exc!r}"


def main() -> None:
    address, keys, legit = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    actions = ["garbage", "oversize", "unknown-key", "no-key", "future-epoch"]
    print(json.dumps({a: attempt(address, a, keys, legit) for a in actions}))


if __name__ == "__main__":
    main()
