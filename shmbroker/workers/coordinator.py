"""The group coordinator process: consumer groups' membership, assignments and committed offsets.

All decisions are GroupCoordinatorState's (group_state.py, no I/O); this module is its edge: one
ZeroMQ ROUTER on a private ipc endpoint, reached only through the broker's relay, and the durable
OffsetStore (``<data>/__consumer_offsets/offsets.log``). An OffsetCommit is appended and fdatasync'd
before its reply leaves, so an acknowledged commit survives SIGKILL of this process; on restart the
store is scanned (torn tail cut) and the groups' offsets come back. Memberships do not: members
get UNKNOWN_MEMBER_ID and rejoin, as with a Kafka coordinator failover.

Relayed messages are ``[relay identity, client identity, header, body, ...]``; replies go back the
same way. A message with an empty client identity comes from the supervisor itself and carries the
topics (``{"partitions_per_topic": {...}}``), which assignments and commit checks need.
JoinGroup may be parked (the round is not complete); its reply is sent when ``tick`` says so.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import zmq

from shmbroker.errors import BrokerError, InvalidRequestError, RemoteProtocolError
from shmbroker.net import protocol
from shmbroker.net.protocol import ApiKey, Message, field_of
from shmbroker.workers.forkserver import pid_alive
from shmbroker.workers.group_errors import MemberIdRequiredError
from shmbroker.workers.group_state import GroupCoordinatorState
from shmbroker.workers.group_types import JoinCompleted, JoinFailed, JoinResult, Pending
from shmbroker.workers.offset_store import OffsetStore
from shmbroker.workers.specs import CoordinatorSpec

log = logging.getLogger(__name__)

POLL_MS = 100
OFFSETS_DIR = "__consumer_offsets"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pairs(raw: Any) -> list[tuple[str, int]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidRequestError("partitions must be a list of [topic, partition]")
    return [(str(t), int(p)) for t, p in raw]


class Coordinator:
    """Request dispatch over GroupCoordinatorState and the offset store. One thread."""

    def __init__(self, data_dir: Path) -> None:
        directory = data_dir / OFFSETS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.store = OffsetStore(directory / "offsets.log")
        self.state = GroupCoordinatorState(offsets=self.store.load())
        # (group, member) -> parked JoinGroup requests: [(route, request)]
        self.parked: dict[tuple[str, str], list[tuple[list[bytes], Message]]] = defaultdict(list)

    def handle(self, route: list[bytes], request: Message) -> list[Any] | None:
        body, now = request.body, _now_ms()
        api = request.api
        try:
            if api == ApiKey.JOIN_GROUP:
                return self._join(route, request, now)
            group_id = field_of(body, "group_id", str, default="")
            member_id = field_of(body, "member_id", str, default="")
            instance = field_of(body, "group_instance_id", str, default=None)
            generation = field_of(body, "generation_id", int, default=-1)
            if api == ApiKey.SYNC_GROUP:
                result = self.state.sync(group_id, member_id, generation, now, group_instance_id=instance)
                return protocol.encode_reply(
                    request,
                    {
                        "protocol_name": result.protocol_name,
                        "assignment": [list(tp) for tp in result.assignment],
                    },
                )
            if api == ApiKey.HEARTBEAT:
                self.state.heartbeat(group_id, member_id, generation, now, group_instance_id=instance)
                return protocol.encode_reply(request, {})
            if api == ApiKey.LEAVE_GROUP:
                self.state.leave(group_id, member_id, now, group_instance_id=instance)
                return protocol.encode_reply(request, {})
            if api == ApiKey.OFFSET_COMMIT:
                raw = field_of(body, "offsets", list)
                offsets = {(str(e[0]), int(e[1])): (e[2], str(e[3]) if len(e) > 3 else "") for e in raw}
                stored = self.state.commit_offsets(
                    group_id, member_id, generation, offsets, now, group_instance_id=instance
                )
                self.store.commit(group_id, stored, commit_ms=now)  # fdatasync before the reply
                return protocol.encode_reply(
                    request, {"offsets": [[t, p, o, m] for (t, p), (o, m) in stored.items()]}
                )
            if api == ApiKey.OFFSET_FETCH:
                found = self.state.fetch_offsets(group_id, _pairs(body.get("partitions")))
                return protocol.encode_reply(
                    request, {"offsets": [[t, p, v[0], v[1]] for (t, p), v in found.items()]}
                )
            if api == ApiKey.LIST_GROUPS:
                return protocol.encode_reply(
                    request,
                    {
                        "groups": [
                            {"group_id": g.group_id, "state": str(g.state), "protocol_type": g.protocol_type}
                            for g in self.state.list_groups()
                        ]
                    },
                )
            if api == ApiKey.DESCRIBE_GROUP:
                d = self.state.describe(group_id)
                return protocol.encode_reply(
                    request,
                    {
                        "group_id": d.group_id,
                        "state": str(d.state),
                        "protocol_name": d.protocol_name,
                        "generation_id": d.generation_id,
                        "leader_id": d.leader_id,
                        "members": [
                            {
                                "member_id": m.member_id,
                                "client_id": m.client_id,
                                "group_instance_id": m.group_instance_id,
                                "topics": list(m.topics),
                                "assignment": [list(tp) for tp in m.assignment],
                            }
                            for m in d.members
                        ],
                        "offsets": [
                            [t, p, v[0], v[1]] for (t, p), v in self.state.fetch_offsets(group_id).items()
                        ],
                    },
                )
            if api == ApiKey.RESET_OFFSETS:
                raw = field_of(body, "offsets", list)
                stored = self.state.reset_offsets(group_id, {(str(e[0]), int(e[1])): (e[2], "") for e in raw})
                self.store.commit(group_id, stored, commit_ms=now)
                return protocol.encode_reply(request, {})
            if api == ApiKey.DELETE_GROUP:
                self.state.delete_group(group_id)
                self.store.delete_group(group_id)
                return protocol.encode_reply(request, {})
            raise InvalidRequestError(f"{api.name} is not a group request")
        except MemberIdRequiredError as exc:
            return protocol.encode_reply(
                request, {"error_code": exc.kafka_code, "error_message": str(exc), "member_id": exc.member_id}
            )
        except BrokerError as exc:
            return protocol.encode_error_reply(request, exc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            return protocol.encode_error_reply(request, InvalidRequestError(f"{api.name}: {exc!r}"))

    def _join(self, route: list[bytes], request: Message, now: int) -> list[Any] | None:
        body = request.body
        result = self.state.join(
            field_of(body, "group_id", str, default=""), field_of(body, "member_id", str, default=""),
            body.get("group_instance_id"), str(body.get("client_id", "")),
            body.get("session_timeout_ms", 45000), body.get("rebalance_timeout_ms", 300000),
            body.get("protocol_type", "consumer"), body.get("protocols", []), now,
        )  # fmt: skip
        if isinstance(result, Pending):
            self.parked[(result.group_id, result.member_id)].append((route, request))
            return None
        return self._join_reply(request, result)

    @staticmethod
    def _join_reply(request: Message, result: JoinResult) -> list[Any]:
        return protocol.encode_reply(
            request,
            {
                "member_id": result.member_id,
                "generation_id": result.generation_id,
                "protocol_name": result.protocol_name,
                "leader_id": result.leader_id,
                "members": list(result.members),
            },
        )

    def tick(self) -> list[tuple[list[bytes], list[Any]]]:
        """Replies to parked joins that the passing of time completed or failed."""
        out = []
        for event in self.state.tick(_now_ms()):
            if isinstance(event, JoinCompleted | JoinFailed):
                for route, request in self.parked.pop((event.group_id, event.member_id), []):
                    if isinstance(event, JoinCompleted):
                        out.append((route, self._join_reply(request, event.result)))
                    else:
                        out.append((route, protocol.encode_error_reply(request, event.error)))
        return out

    def close(self) -> None:
        self.store.close()


def run(spec: CoordinatorSpec) -> None:
    """The coordinator process's body: serve until the relay's socket closes or SIGTERM."""
    coordinator = Coordinator(spec.data_dir)
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(spec.endpoint)
    next_check = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                if spec.supervisor_pid and not pid_alive(spec.supervisor_pid):
                    break  # orphaned (the supervisor was SIGKILLed): stop, closing the offset store
            if socket.poll(POLL_MS, zmq.POLLIN):
                for _ in range(256):
                    try:
                        frames = socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) < 4:
                        continue
                    route, payload = frames[:2], frames[2:]
                    try:
                        request = protocol.decode(payload)
                    except RemoteProtocolError:
                        continue  # the relay checked it already; nothing to answer
                    if route[1] == b"":  # from the supervisor: the topics
                        coordinator.state.set_topics(request.body.get("partitions_per_topic", {}), _now_ms())
                        continue
                    reply = coordinator.handle(route, request)
                    if reply is not None:
                        socket.send_multipart([*route, *reply])
            for route, reply in coordinator.tick():
                socket.send_multipart([*route, *reply])
    finally:
        coordinator.close()
        socket.close(0)
        context.term()
