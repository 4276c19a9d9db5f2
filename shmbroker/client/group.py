"""One consumer's membership in a consumer group: a non-blocking state machine over its own Connection.

    unjoined --JoinGroup--> joining --(79: rejoin with the given id)--> joining
    joining --join reply--> syncing --assignment--> stable --heartbeat every heartbeat.interval.ms-->
    stable --27 (rebalance)--> revoking (eager: the app revokes everything first) --> unjoined
    stable --22/25 (fenced by generation / forgotten)--> unjoined, partitions *lost*
    any --82 (another process has our group.instance.id)--> failed (fatal)

``step(now_s)`` sends what is due, handles every reply that has arrived, and returns events for the
consumer: ``Assigned``, ``Revoked``, ``Lost`` (the consumer calls on_assign/on_revoke/on_lost, as
confluent-kafka does), ``CommitDone`` (an asynchronous commit finished) and ``GroupError``. It never
blocks; only ``commit(sync=True)``, ``fetch_committed`` and ``leave`` wait, each with a deadline.

Invariants:
- At most one JoinGroup, one SyncGroup and one Heartbeat are in flight; every request has a deadline
  (a JoinGroup's is ``max.poll.interval.ms`` + the request timeout: the coordinator parks it until
  the round completes), after which it is forgotten and retried with backoff.
- Eager assignors: after a Revoked event nothing is sent until ``revocation_done`` (the consumer
  commits the revoked partitions first; the coordinator accepts commits of the current generation
  while it prepares the rebalance). Cooperative (``cooperative-sticky``): the member keeps its
  partitions while rejoining, and a sync reports only what moved (incremental).
- ``foreground=False`` (the consumer's heartbeat thread) never starts a JoinGroup: a rejoin waits for
  the application's next poll, so callbacks run in the application's thread.
Not thread-safe: the consumer serialises calls with a lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shmbroker.client.group_events import (
    COOPERATIVE,
    COORDINATOR_NOT_AVAILABLE,
    FENCED_INSTANCE_ID,
    ILLEGAL_GENERATION,
    MAX_POLL_EXCEEDED,
    MEMBER_ID_REQUIRED,
    REBALANCE_IN_PROGRESS,
    REQUEST_TIMED_OUT,
    TP,
    UNKNOWN_MEMBER_ID,
    Assigned,
    CommitDone,
    GroupConnection,
    GroupError,
    GroupEvent,
    GroupSettings,
    Lost,
    MemberState,
    Revoked,
)
from shmbroker.client.types import KafkaError
from shmbroker.net.protocol import ApiKey, Message


@dataclass
class _Request:
    cid: int
    api: ApiKey
    deadline_s: float
    context: Any = None
    sync: bool = False  # a blocking caller waits for it: keep the reply in _results


@dataclass
class _Backoff:
    base_s: float
    max_s: float
    current_s: float = 0.0

    def next(self) -> float:
        self.current_s = self.base_s if not self.current_s else min(self.max_s, self.current_s * 2)
        return self.current_s

    def reset(self) -> None:
        self.current_s = 0.0


def _error(reply: Message) -> KafkaError:
    code = reply.error_code
    return KafkaError(
        code,
        str(reply.body.get("error_message", "")) or f"group error {code}",
        retriable=code in (COORDINATOR_NOT_AVAILABLE, REQUEST_TIMED_OUT, REBALANCE_IN_PROGRESS),
    )


@dataclass
class _Membership:
    member_id: str = ""
    generation_id: int = -1
    protocol_name: str = ""
    assignment: frozenset[TP] = field(default_factory=frozenset)


class GroupMember:
    def __init__(self, settings: GroupSettings, connection: GroupConnection, now_s: float) -> None:
        self.settings = settings
        self._conn = connection
        self.state = MemberState.UNJOINED
        self.topics: tuple[str, ...] = ()
        self.m = _Membership()
        self._inflight: dict[int, _Request] = {}
        self._results: dict[int, Message | None] = {}  # replies a blocking call waits for (None: timed out)
        self._events: list[GroupEvent] = []
        self._next_join_s = now_s
        self._next_heartbeat_s = now_s
        self._last_heartbeat_ok_s = now_s
        self._last_poll_s = now_s
        self._heartbeat_in_flight = False
        self._backoff = _Backoff(settings.retry_backoff_ms / 1000, settings.retry_backoff_max_ms / 1000)

    # -- what the consumer calls ------------------------------------------------------------------
    @property
    def subscribed(self) -> bool:
        return bool(self.topics)

    @property
    def cooperative(self) -> bool:
        name = self.m.protocol_name or self.settings.strategies[0]
        return name == COOPERATIVE

    def subscribe(self, topics: tuple[str, ...], now_s: float) -> list[GroupEvent]:
        """Change the subscription; a member already in the group rejoins (eager: revoke first)."""
        changed = tuple(sorted(set(topics))) != self.topics
        self.topics = tuple(sorted(set(topics)))
        if changed and self.state in (MemberState.STABLE, MemberState.SYNCING, MemberState.JOINING):
            self._rejoin(now_s, revoke=True)
        return self._take()

    def poll_called(self, now_s: float) -> None:
        self._last_poll_s = now_s

    def revocation_done(self, now_s: float) -> None:
        """The consumer has revoked (and committed) what a Revoked event named: rejoin now."""
        if self.state is MemberState.REVOKING:
            self.state, self._next_join_s = MemberState.UNJOINED, now_s

    def step(self, now_s: float, *, foreground: bool = True) -> list[GroupEvent]:
        """Handle replies and timeouts, send what is due; return the events for the consumer."""
        self._pump(now_s, 0.0)
        if self.state is MemberState.FAILED or not self.topics:
            return self._take()
        active = self.state in (MemberState.JOINING, MemberState.SYNCING, MemberState.STABLE)
        if active and now_s - self._last_poll_s > self.settings.max_poll_interval_ms / 1000:
            self._max_poll_exceeded(now_s)
        elif self.state is MemberState.UNJOINED and foreground and now_s >= self._next_join_s:
            self._send_join(now_s)
        elif self.state is MemberState.STABLE:
            if now_s - self._last_heartbeat_ok_s > self.settings.session_timeout_ms / 1000:
                self._lose(now_s, "no successful heartbeat within session.timeout.ms", reset_id=False)
            elif not self._heartbeat_in_flight and now_s >= self._next_heartbeat_s:
                self._send(ApiKey.HEARTBEAT, self._ids(generation=True), now_s)
                self._heartbeat_in_flight = True
                self._next_heartbeat_s = now_s + self.settings.heartbeat_interval_ms / 1000
        return self._take()

    def commit(
        self, offsets: dict[TP, tuple[int, str]], now_s: float, *, sync: bool, timeout_s: float | None = None
    ) -> int:
        """Send an OffsetCommit; returns its correlation id (``wait`` for it when sync). A consumer
        that is not in a group (assign() with a group.id) commits as a simple consumer (generation -1)."""
        # The generation we hold partitions in (also while a cooperative member rejoins, or an eager
        # one revokes: the coordinator takes commits of the current generation while it rebalances).
        in_group = (
            bool(self.m.member_id) and self.m.generation_id >= 0 and self.state is not MemberState.FAILED
        )
        body: dict[str, Any] = (
            self._ids(generation=True)
            if in_group
            else {
                "group_id": self.settings.group_id,
                "member_id": "",
                "generation_id": -1,
                "group_instance_id": None,
            }
        )
        body["offsets"] = [[t, p, o, md] for (t, p), (o, md) in sorted(offsets.items())]
        timeout_s = self.settings.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        return self._send(ApiKey.OFFSET_COMMIT, body, now_s, context=offsets, sync=sync, timeout_s=timeout_s)

    def fetch_committed_request(self, partitions: list[TP] | None, now_s: float, timeout_s: float) -> int:
        body = {
            "group_id": self.settings.group_id,
            "partitions": None if partitions is None else [list(tp) for tp in partitions],
        }
        return self._send(ApiKey.OFFSET_FETCH, body, now_s, sync=True, timeout_s=timeout_s)

    def wait(self, correlation_id: int, now_s: float, timeout_s: float, clock: Any) -> Message | None:
        """Pump replies until the one for ``correlation_id`` arrives (None: timed out)."""
        deadline = now_s + timeout_s
        while correlation_id not in self._results:
            remaining = deadline - now_s
            if remaining <= 0:
                request = self._inflight.pop(correlation_id, None)
                if request is not None:
                    self._conn.forget(correlation_id)
                return None
            self._pump(now_s, min(remaining, 0.05))
            now_s = clock()
        return self._results.pop(correlation_id)

    def leave(self, now_s: float, clock: Any) -> None:
        """Leave the group (dynamic members; static ones stay until session.timeout.ms, as in Kafka)
        and forget the membership. Waits up to 2 s for the reply so the request leaves the socket."""
        if self.m.member_id and self.settings.instance_id is None and self.state is not MemberState.FAILED:
            cid = self._send(
                ApiKey.LEAVE_GROUP,
                {
                    "group_id": self.settings.group_id,
                    "member_id": self.m.member_id,
                    "group_instance_id": None,
                },
                now_s,
                sync=True,
                timeout_s=2.0,
            )
            self.wait(cid, now_s, 2.0, clock)
        self.topics = ()
        self.m = _Membership()
        self.state = MemberState.UNJOINED
        for cid, request in list(self._inflight.items()):
            if request.api in (ApiKey.JOIN_GROUP, ApiKey.SYNC_GROUP, ApiKey.HEARTBEAT):
                del self._inflight[cid]
                self._conn.forget(cid)
        self._heartbeat_in_flight = False

    # -- requests ---------------------------------------------------------------------------------
    def _ids(self, *, generation: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "group_id": self.settings.group_id,
            "member_id": self.m.member_id,
            "group_instance_id": self.settings.instance_id,
        }
        if generation:
            body["generation_id"] = self.m.generation_id
        return body

    def _send(
        self,
        api: ApiKey,
        body: dict[str, Any],
        now_s: float,
        *,
        context: Any = None,
        sync: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        timeout_s = self.settings.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        cid = self._conn.send(api, body)
        self._inflight[cid] = _Request(cid, api, now_s + timeout_s, context, sync)
        return cid

    def _send_join(self, now_s: float) -> None:
        body = self._ids(generation=False)
        body.update(
            client_id=self.settings.client_id,
            session_timeout_ms=self.settings.session_timeout_ms,
            rebalance_timeout_ms=self.settings.max_poll_interval_ms,
            protocol_type="consumer",
            protocols=[{"name": s, "topics": list(self.topics)} for s in self.settings.strategies],
        )
        wait_s = (self.settings.max_poll_interval_ms + self.settings.request_timeout_ms) / 1000
        self._send(ApiKey.JOIN_GROUP, body, now_s, timeout_s=wait_s)
        self.state = MemberState.JOINING

    def _pump(self, now_s: float, timeout_s: float) -> None:
        while True:
            reply = self._conn.receive(timeout_s)
            timeout_s = 0.0
            if reply is None:
                break
            request = self._inflight.pop(reply.correlation_id, None)
            if request is not None:
                self._on_reply(request, reply, now_s)
        for cid, request in list(self._inflight.items()):
            if now_s >= request.deadline_s:
                del self._inflight[cid]
                self._conn.forget(cid)
                self._on_reply(request, None, now_s)

    def _on_reply(self, request: _Request, reply: Message | None, now_s: float) -> None:
        """``reply`` None: the request timed out."""
        if request.sync:
            self._results[request.cid] = reply
        handler = {
            ApiKey.JOIN_GROUP: self._on_join,
            ApiKey.SYNC_GROUP: self._on_sync,
            ApiKey.HEARTBEAT: self._on_heartbeat,
            ApiKey.OFFSET_COMMIT: self._on_commit,
        }.get(request.api)
        if handler is not None:
            handler(request, reply, now_s)

    # -- replies ----------------------------------------------------------------------------------
    def _on_join(self, request: _Request, reply: Message | None, now_s: float) -> None:
        if self.state is not MemberState.JOINING:
            return  # we left (or were fenced) meanwhile
        code = REQUEST_TIMED_OUT if reply is None else reply.error_code
        if code == 0 and reply is not None:
            self._backoff.reset()
            body = reply.body
            self.m.member_id, self.m.generation_id = str(body["member_id"]), int(body["generation_id"])
            self.m.protocol_name = str(body.get("protocol_name", ""))
            self.state = MemberState.SYNCING
            self._send(ApiKey.SYNC_GROUP, self._ids(generation=True), now_s)
        elif code == MEMBER_ID_REQUIRED and reply is not None:
            self.m.member_id = str(reply.body.get("member_id", ""))
            self._send_join(now_s)
        else:
            self._join_failed(code, reply, now_s)

    def _join_failed(self, code: int, reply: Message | None, now_s: float) -> None:
        if code == FENCED_INSTANCE_ID:
            self._fenced(reply, now_s)
            return
        if code == UNKNOWN_MEMBER_ID:
            self.m.member_id = ""
        retriable = code in (
            COORDINATOR_NOT_AVAILABLE,
            REQUEST_TIMED_OUT,
            UNKNOWN_MEMBER_ID,
            REBALANCE_IN_PROGRESS,
            ILLEGAL_GENERATION,
        )
        if not retriable and reply is not None:  # a config error: report it, retry slowly
            self._events.append(GroupError(_error(reply)))
            self._backoff.current_s = self._backoff.max_s / 2
        self.state = MemberState.UNJOINED
        self._next_join_s = now_s + (
            0.0 if code in (UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS) else self._backoff.next()
        )

    def _on_sync(self, request: _Request, reply: Message | None, now_s: float) -> None:
        if self.state is not MemberState.SYNCING:
            return
        code = REQUEST_TIMED_OUT if reply is None else reply.error_code
        if code in (
            COORDINATOR_NOT_AVAILABLE,
            REQUEST_TIMED_OUT,
        ):  # rejoin: a restarted coordinator forgot us
            self.state, self._next_join_s = MemberState.UNJOINED, now_s + self._backoff.next()
            return
        if code or reply is None:
            self._heartbeat_error(code, reply, now_s)
            return
        new = frozenset((str(t), int(p)) for t, p in reply.body.get("assignment", []))
        old = self.m.assignment
        self.m.assignment = new
        self.state = MemberState.STABLE
        self._last_heartbeat_ok_s = now_s
        self._next_heartbeat_s = now_s + self.settings.heartbeat_interval_ms / 1000
        if self.cooperative:
            if old - new:
                self._events.append(Revoked(tuple(sorted(old - new)), True))
            self._events.append(Assigned(tuple(sorted(new - old)), True))
        else:
            self._events.append(Assigned(tuple(sorted(new)), False))

    def _on_heartbeat(self, request: _Request, reply: Message | None, now_s: float) -> None:
        self._heartbeat_in_flight = False
        if self.state is not MemberState.STABLE:
            return
        code = REQUEST_TIMED_OUT if reply is None else reply.error_code
        if code == 0:
            self._last_heartbeat_ok_s = now_s
        elif code in (COORDINATOR_NOT_AVAILABLE, REQUEST_TIMED_OUT):
            self._next_heartbeat_s = min(self._next_heartbeat_s, now_s + self._backoff.next())
        else:
            self._heartbeat_error(code, reply, now_s)

    def _heartbeat_error(self, code: int, reply: Message | None, now_s: float) -> None:
        """What a heartbeat or sync error means for the membership (Kafka's consumer semantics)."""
        if code == REBALANCE_IN_PROGRESS:
            self._rejoin(now_s, revoke=not self.cooperative)
        elif code == FENCED_INSTANCE_ID:
            self._fenced(reply, now_s)
        elif code in (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID):
            self._lose(now_s, f"error {code}", reset_id=code == UNKNOWN_MEMBER_ID)
        elif reply is not None:
            self._events.append(GroupError(_error(reply)))
            self._rejoin(now_s, revoke=not self.cooperative)

    def _on_commit(self, request: _Request, reply: Message | None, now_s: float) -> None:
        if request.sync:
            return  # the waiting caller reports it
        offsets = tuple((t, p, o) for (t, p), (o, _m) in sorted(request.context.items()))
        if reply is None:
            self._events.append(
                CommitDone(KafkaError(REQUEST_TIMED_OUT, "commit timed out", retriable=True), offsets)
            )
        else:
            self._events.append(CommitDone(_error(reply) if reply.error_code else None, offsets))

    # -- transitions ------------------------------------------------------------------------------
    def _rejoin(self, now_s: float, *, revoke: bool) -> None:
        self._forget(ApiKey.JOIN_GROUP, ApiKey.SYNC_GROUP)
        if revoke and self.m.assignment:
            self._events.append(Revoked(tuple(sorted(self.m.assignment)), False))
            self.m.assignment = frozenset()
            self.state = MemberState.REVOKING
        else:
            self.state, self._next_join_s = MemberState.UNJOINED, now_s

    def _lose(self, now_s: float, reason: str, *, reset_id: bool) -> None:
        self._forget(ApiKey.JOIN_GROUP, ApiKey.SYNC_GROUP)
        if self.m.assignment:
            self._events.append(Lost(tuple(sorted(self.m.assignment)), self.cooperative))
        self.m.assignment = frozenset()
        if reset_id:
            self.m.member_id = ""
        self.m.generation_id = -1
        self.state, self._next_join_s = MemberState.UNJOINED, now_s

    def _fenced(self, reply: Message | None, now_s: float) -> None:
        self._lose(now_s, "fenced", reset_id=False)
        message = str(reply.body.get("error_message", "")) if reply is not None else ""
        self._events.append(
            GroupError(KafkaError(FENCED_INSTANCE_ID, message or "fenced by a newer instance", fatal=True))
        )
        self.state = MemberState.FAILED

    def _max_poll_exceeded(self, now_s: float) -> None:
        """As librdkafka: leave the group (dynamic members), lose the partitions, report on next poll."""
        if self.m.member_id and self.settings.instance_id is None:
            self._send(
                ApiKey.LEAVE_GROUP,
                {
                    "group_id": self.settings.group_id,
                    "member_id": self.m.member_id,
                    "group_instance_id": None,
                },
                now_s,
            )
        self._lose(now_s, "max.poll.interval.ms", reset_id=self.settings.instance_id is None)
        self._events.append(
            GroupError(
                KafkaError(
                    MAX_POLL_EXCEEDED,
                    f"Application maximum poll interval ({self.settings.max_poll_interval_ms}ms) "
                    "exceeded by the application: leaving the group",
                )
            )
        )

    def _forget(self, *apis: ApiKey) -> None:
        for cid, request in list(self._inflight.items()):
            if request.api in apis:
                del self._inflight[cid]
                self._conn.forget(cid)

    def _take(self) -> list[GroupEvent]:
        events, self._events = self._events, []
        return events
