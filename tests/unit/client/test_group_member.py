"""GroupMember (client/group.py) against a scripted connection: no broker, no clock, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from shmbroker.client.group import GroupMember
from shmbroker.client.group_events import (
    MAX_POLL_EXCEEDED,
    Assigned,
    CommitDone,
    GroupError,
    GroupSettings,
    Lost,
    MemberState,
    Revoked,
)
from shmbroker.net.protocol import ApiKey, Message

SETTINGS = GroupSettings(
    "g", client_id="c", session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_interval_ms=10_000,
    request_timeout_ms=2000,
)  # fmt: skip


class FakeConnection:
    """Records requests; replies are queued by the test and come out of ``receive`` in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, ApiKey, dict[str, Any]]] = []
        self.replies: list[Message] = []
        self.forgotten: list[int] = []
        self._cid = 0

    def send(self, api: ApiKey, body: dict[str, Any], data: list[Any] | None = None) -> int:
        self._cid += 1
        self.sent.append((self._cid, api, body))
        return self._cid

    def receive(self, timeout_s: float = 0.0) -> Message | None:
        return self.replies.pop(0) if self.replies else None

    def forget(self, correlation_id: int) -> None:
        self.forgotten.append(correlation_id)

    def last(self, api: ApiKey) -> tuple[int, dict[str, Any]]:
        for cid, sent_api, body in reversed(self.sent):
            if sent_api == api:
                return cid, body
        raise AssertionError(f"no {api.name} sent; sent {[a.name for _c, a, _b in self.sent]}")

    def count(self, api: ApiKey) -> int:
        return sum(1 for _c, a, _b in self.sent if a == api)

    def reply(self, api: ApiKey, **body: Any) -> None:
        cid, _ = self.last(api)
        body.setdefault("error_code", 0)
        self.replies.append(Message(api, cid, body, [], True))


def stable_member(
    settings: GroupSettings = SETTINGS, assignment: list[list[Any]] | None = None, protocol: str = "range"
) -> tuple[GroupMember, FakeConnection]:
    conn = FakeConnection()
    member = GroupMember(settings, conn, 0.0)
    member.subscribe(("t",), 0.0)
    assert member.step(0.0) == []
    conn.reply(ApiKey.JOIN_GROUP, error_code=79, member_id="c-1")
    member.step(0.1)
    assert conn.last(ApiKey.JOIN_GROUP)[1]["member_id"] == "c-1"
    conn.reply(ApiKey.JOIN_GROUP, member_id="c-1", generation_id=1, protocol_name=protocol, leader_id="c-1")
    member.step(0.2)
    assert member.state is MemberState.SYNCING
    conn.reply(ApiKey.SYNC_GROUP, assignment=assignment if assignment is not None else [["t", 0], ["t", 1]])
    events = member.step(0.3)
    assert member.state is MemberState.STABLE
    assert events == [
        Assigned(tuple((t, p) for t, p in assignment or [["t", 0], ["t", 1]]), protocol != "range")
    ]
    return member, conn


def test_join_sends_the_subscription_in_preference_order_and_rejoins_with_the_id_of_79() -> None:
    member, conn = stable_member()
    _cid, join = conn.last(ApiKey.JOIN_GROUP)
    assert join["protocols"] == [{"name": "range", "topics": ["t"]}, {"name": "roundrobin", "topics": ["t"]}]
    assert join["rebalance_timeout_ms"] == 10_000
    assert join["session_timeout_ms"] == 6000
    assert conn.count(ApiKey.JOIN_GROUP) == 2
    assert conn.last(ApiKey.SYNC_GROUP)[1] == {
        "group_id": "g", "member_id": "c-1", "generation_id": 1, "group_instance_id": None}  # fmt: skip
    assert member.m.assignment == {("t", 0), ("t", 1)}


def test_heartbeats_every_interval_one_at_a_time() -> None:
    member, conn = stable_member()
    member.step(1.2)
    assert conn.count(ApiKey.HEARTBEAT) == 0
    member.step(1.31)
    assert conn.count(ApiKey.HEARTBEAT) == 1
    member.step(2.5)  # the first is unanswered: no second one
    assert conn.count(ApiKey.HEARTBEAT) == 1
    conn.reply(ApiKey.HEARTBEAT)
    member.step(2.6)
    assert conn.count(ApiKey.HEARTBEAT) == 2


def test_eager_rebalance_revokes_everything_and_rejoins_only_after_revocation() -> None:
    member, conn = stable_member()
    member.step(1.4)
    conn.reply(ApiKey.HEARTBEAT, error_code=27)
    assert member.step(1.5) == [Revoked((("t", 0), ("t", 1)), False)]
    assert member.state is MemberState.REVOKING
    member.step(1.6)
    assert conn.count(ApiKey.JOIN_GROUP) == 2  # still waiting for the consumer's commit
    member.revocation_done(1.7)
    member.step(1.7)
    assert conn.count(ApiKey.JOIN_GROUP) == 3
    assert conn.last(ApiKey.JOIN_GROUP)[1]["member_id"] == "c-1"


def test_cooperative_rebalance_keeps_partitions_and_revokes_only_what_moved() -> None:
    settings = GroupSettings("g", client_id="c", session_timeout_ms=6000, strategies=("cooperative-sticky",))
    member, conn = stable_member(settings, [["t", 0], ["t", 1], ["t", 2]], protocol="cooperative-sticky")
    member.step(3.4)
    conn.reply(ApiKey.HEARTBEAT, error_code=27)
    assert member.step(3.5) == []  # nothing revoked up front
    assert member.state is MemberState.JOINING
    conn.reply(ApiKey.JOIN_GROUP, member_id="c-1", generation_id=2, protocol_name="cooperative-sticky")
    member.step(3.6)
    conn.reply(ApiKey.SYNC_GROUP, assignment=[["t", 0], ["t", 3]])
    assert member.step(3.7) == [Revoked((("t", 1), ("t", 2)), True), Assigned((("t", 3),), True)]


@pytest.mark.parametrize(("code", "member_id_after"), [(25, ""), (22, "c-1")])
def test_fenced_by_generation_or_forgotten_means_partitions_lost(code: int, member_id_after: str) -> None:
    member, conn = stable_member()
    member.step(1.4)
    conn.reply(ApiKey.HEARTBEAT, error_code=code)
    assert member.step(1.5) == [Lost((("t", 0), ("t", 1)), False)]
    member.step(1.6)
    assert conn.last(ApiKey.JOIN_GROUP)[1]["member_id"] == member_id_after
    assert member.state is MemberState.JOINING


def test_fenced_instance_is_fatal_and_stops_all_requests() -> None:
    settings = GroupSettings("g", instance_id="i-1", session_timeout_ms=6000)
    conn = FakeConnection()
    member = GroupMember(settings, conn, 0.0)
    member.subscribe(("t",), 0.0)
    member.step(0.0)
    assert conn.last(ApiKey.JOIN_GROUP)[1]["group_instance_id"] == "i-1"
    conn.reply(ApiKey.JOIN_GROUP, error_code=82, error_message="fenced")
    [event] = member.step(0.1)
    assert isinstance(event, GroupError)
    assert (event.error.code(), event.error.fatal()) == (82, True)
    sent = len(conn.sent)
    member.step(10.0)
    assert len(conn.sent) == sent
    assert member.state is MemberState.FAILED


def test_max_poll_interval_exceeded_leaves_and_reports_and_rejoins_on_next_poll() -> None:
    member, conn = stable_member()
    member.poll_called(0.3)
    member.step(5.0, foreground=False)
    conn.reply(ApiKey.HEARTBEAT)
    events = member.step(10.4, foreground=False)
    assert events[0] == Lost((("t", 0), ("t", 1)), False)
    assert isinstance(events[1], GroupError)
    assert events[1].error.code() == MAX_POLL_EXCEEDED
    assert conn.last(ApiKey.LEAVE_GROUP)[1]["member_id"] == "c-1"
    joins = conn.count(ApiKey.JOIN_GROUP)
    member.step(11.0, foreground=False)  # the heartbeat thread never rejoins
    assert conn.count(ApiKey.JOIN_GROUP) == joins
    member.poll_called(12.0)
    member.step(12.0)
    assert conn.count(ApiKey.JOIN_GROUP) == joins + 1
    assert conn.last(ApiKey.JOIN_GROUP)[1]["member_id"] == ""


def test_background_step_heartbeats_but_never_starts_a_join() -> None:
    conn = FakeConnection()
    member = GroupMember(SETTINGS, conn, 0.0)
    member.subscribe(("t",), 0.0)
    member.step(0.0, foreground=False)
    assert conn.count(ApiKey.JOIN_GROUP) == 0


def test_join_without_reply_is_forgotten_at_its_deadline_and_retried() -> None:
    conn = FakeConnection()
    member = GroupMember(SETTINGS, conn, 0.0)
    member.subscribe(("t",), 0.0)
    member.step(0.0)
    cid, _ = conn.last(ApiKey.JOIN_GROUP)
    member.poll_called(11.0)
    member.step(11.0)  # max.poll.interval.ms + request timeout = 12 s: not yet
    assert conn.count(ApiKey.JOIN_GROUP) == 1
    member.poll_called(12.0)
    member.step(12.0)
    assert cid in conn.forgotten
    member.step(12.05)
    assert conn.count(ApiKey.JOIN_GROUP) == 1  # backoff first
    member.step(12.2)
    assert conn.count(ApiKey.JOIN_GROUP) == 2


def test_coordinator_not_available_is_retried_with_backoff() -> None:
    conn = FakeConnection()
    member = GroupMember(SETTINGS, conn, 0.0)
    member.subscribe(("t",), 0.0)
    member.step(0.0)
    conn.reply(ApiKey.JOIN_GROUP, error_code=15)
    assert member.step(0.01) == []
    assert member.state is MemberState.UNJOINED
    member.step(0.05)
    assert conn.count(ApiKey.JOIN_GROUP) == 1
    member.step(0.12)
    assert conn.count(ApiKey.JOIN_GROUP) == 2


def test_no_successful_heartbeat_within_the_session_loses_the_partitions() -> None:
    member, conn = stable_member()
    for t in (1.4, 2.4, 3.4, 4.4, 5.4, 6.2):
        member.poll_called(t)
        member.step(t)
        if conn.count(ApiKey.HEARTBEAT):
            conn.reply(ApiKey.HEARTBEAT, error_code=15)
    member.poll_called(6.4)
    assert member.step(6.4) == [Lost((("t", 0), ("t", 1)), False)]


def test_commits_carry_the_generation_in_a_group_and_minus_one_outside() -> None:
    conn = FakeConnection()
    member = GroupMember(SETTINGS, conn, 0.0)
    member.commit({("t", 0): (5, "")}, 0.0, sync=False)
    assert conn.last(ApiKey.OFFSET_COMMIT)[1] == {
        "group_id": "g", "member_id": "", "generation_id": -1, "group_instance_id": None,
        "offsets": [["t", 0, 5, ""]]}  # fmt: skip
    member, conn = stable_member()
    member.commit({("t", 1): (7, "m")}, 1.0, sync=False)
    body = conn.last(ApiKey.OFFSET_COMMIT)[1]
    assert (body["member_id"], body["generation_id"], body["offsets"]) == ("c-1", 1, [["t", 1, 7, "m"]])
    conn.reply(ApiKey.OFFSET_COMMIT, error_code=22, error_message="old generation")
    [done] = member.step(1.1)
    assert isinstance(done, CommitDone)
    assert done.error is not None
    assert (done.error.code(), done.offsets) == (22, (("t", 1, 7),))


def test_sync_commit_waits_for_its_own_reply() -> None:
    member, conn = stable_member()
    cid = member.commit({("t", 0): (3, "")}, 1.0, sync=True)
    conn.reply(ApiKey.OFFSET_COMMIT)
    reply = member.wait(cid, 1.0, 1.0, lambda: 1.0)
    assert reply is not None
    assert reply.error_code == 0
    cid = member.commit({("t", 0): (4, "")}, 1.0, sync=True)
    assert member.wait(cid, 1.0, 0.0, lambda: 1.0) is None
    assert cid in conn.forgotten


def test_subscription_change_rejoins_eager_members_after_revoking() -> None:
    member, conn = stable_member()
    assert member.subscribe(("t", "u"), 1.0) == [Revoked((("t", 0), ("t", 1)), False)]
    member.revocation_done(1.0)
    member.step(1.0)
    assert conn.last(ApiKey.JOIN_GROUP)[1]["protocols"][0]["topics"] == ["t", "u"]


def test_leave_sends_leave_group_for_dynamic_members_only() -> None:
    member, conn = stable_member()
    conn.replies.clear()
    member.leave(1.0, lambda: 5.0)
    assert conn.last(ApiKey.LEAVE_GROUP)[1]["member_id"] == "c-1"
    assert member.state is MemberState.UNJOINED
    static = GroupSettings("g", instance_id="i-1", session_timeout_ms=6000)
    member, conn = stable_member(static)
    member.leave(1.0, lambda: 5.0)
    assert conn.count(ApiKey.LEAVE_GROUP) == 0


def test_consumer_config_takes_the_group_keys_with_librdkafka_defaults() -> None:
    from shmbroker.client.config import ConsumerConfig

    conf = ConsumerConfig.from_dict({"group.id": "g"})
    assert (conf.session_timeout_ms, conf.heartbeat_interval_ms, conf.max_poll_interval_ms) == (
        45000,
        3000,
        300000,
    )
    assert conf.assignment_strategies == ("range", "roundrobin")
    assert (conf.enable_auto_commit, conf.auto_commit_interval_ms, conf.enable_auto_offset_store) == (
        True,
        5000,
        True,
    )
    conf = ConsumerConfig.from_dict({
        "group.id": "g", "group.instance.id": "i-1", "partition.assignment.strategy": "roundrobin, range",
        "enable.auto.commit": False, "enable.auto.offset.store": "false", "client.id": "me"})  # fmt: skip
    assert conf.assignment_strategies == ("roundrobin", "range")
    assert (conf.group_instance_id, conf.client_id, conf.enable_auto_commit) == ("i-1", "me", False)
    assert conf.enable_auto_offset_store is False


@pytest.mark.parametrize(
    "bad",
    [
        {"partition.assignment.strategy": "sticky"},
        {"partition.assignment.strategy": "cooperative-sticky,range"},
        {"session.timeout.ms": 60000, "max.poll.interval.ms": 30000},
        {"heartbeat.interval.ms": 0},
    ],
)
def test_consumer_config_refuses_group_values_librdkafka_refuses(bad: dict[str, Any]) -> None:
    from shmbroker import KafkaError, KafkaException
    from shmbroker.client.config import ConsumerConfig

    with pytest.raises(KafkaException) as info:
        ConsumerConfig.from_dict({"group.id": "g", **bad})
    assert info.value.args[0].code() == KafkaError._INVALID_ARG


def test_producer_and_admin_ignore_consumer_group_keys() -> None:
    from shmbroker.client.config import AdminConfig, ProducerConfig

    ProducerConfig.from_dict({"group.id": "g", "session.timeout.ms": 6000, "enable.auto.commit": True})
    AdminConfig.from_dict({"group.id": "g", "max.poll.interval.ms": 6000})


def test_a_rejoining_cooperative_member_commits_in_the_generation_it_holds_partitions_in() -> None:
    settings = GroupSettings("g", client_id="c", session_timeout_ms=6000, strategies=("cooperative-sticky",))
    member, conn = stable_member(settings, [["t", 0]], protocol="cooperative-sticky")
    member.step(3.4)
    conn.reply(ApiKey.HEARTBEAT, error_code=27)
    member.step(3.5)
    assert member.state is MemberState.JOINING
    member.commit({("t", 0): (9, "")}, 3.6, sync=False)
    body = conn.last(ApiKey.OFFSET_COMMIT)[1]
    assert (body["member_id"], body["generation_id"]) == ("c-1", 1)
