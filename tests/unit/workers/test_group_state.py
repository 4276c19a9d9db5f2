"""The sans-I/O group coordinator: membership, generations, rebalances, static members, sessions."""

from __future__ import annotations

from typing import Any

import pytest

from shmbroker.workers.group_errors import (
    FencedInstanceIdError,
    IllegalGenerationError,
    MemberIdRequiredError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from shmbroker.workers.group_types import (
    GroupState,
    JoinCompleted,
    JoinFailed,
    JoinResult,
    MemberRemoved,
    Pending,
)
from tests.unit.workers.group_helpers import REBALANCE_MS, SESSION_MS, join, new_member, new_state, settle


def test_first_join_requires_a_member_id_then_forms_generation_one() -> None:
    state = new_state()
    with pytest.raises(MemberIdRequiredError) as info:
        join(state, "g", "", 0)
    member_id = info.value.member_id
    assert member_id.startswith("cli-")
    result = join(state, "g", member_id, 0)
    assert isinstance(result, JoinResult)
    assert (result.generation_id, result.leader_id, result.protocol_name) == (1, member_id, "range")
    assert result.members == (member_id,)
    assert state.sync("g", member_id, 1, 0).assignment == tuple(("t", p) for p in range(6))


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_three_members_on_six_partitions_get_two_each(strategy: str) -> None:
    state = new_state()
    members: dict[str, dict[str, Any]] = {
        new_member(state, "g", 0, strategy=strategy)[0]: {"strategy": strategy} for _ in range(3)
    }
    assignment = settle(state, "g", members, 0)
    assert sorted(len(v) for v in assignment.values()) == [2, 2, 2]
    assert sorted(tp for v in assignment.values() for tp in v) == [("t", p) for p in range(6)]
    assert state.describe("g").state is GroupState.STABLE


def test_a_second_member_waits_until_the_first_rejoins() -> None:
    state = new_state()
    a, _ = new_member(state, "g", 0)
    b, pending = new_member(state, "g", 0)
    assert pending == Pending("g", b)
    with pytest.raises(RebalanceInProgressError):
        state.heartbeat("g", a, 1, 10)
    with pytest.raises(RebalanceInProgressError):
        state.sync("g", a, 1, 10)
    result = join(state, "g", a, 20)
    assert isinstance(result, JoinResult)
    assert result.generation_id == 2
    events = state.tick(20)
    assert [e.member_id for e in events if isinstance(e, JoinCompleted)] == [b]


@pytest.mark.parametrize("how", ["leave", "expire"])
def test_a_member_leaving_or_expiring_moves_its_partitions(how: str) -> None:
    state = new_state()
    members: dict[str, dict[str, Any]] = {new_member(state, "g", 0)[0]: {} for _ in range(3)}
    before = settle(state, "g", members, 0)
    gone, *rest = sorted(members)
    generation = state.describe("g").generation_id
    if how == "leave":
        state.leave("g", gone, 100)
    else:
        for m in rest:  # the others keep heartbeating; `gone` is silent
            state.heartbeat("g", m, generation, SESSION_MS - 1)
        assert state.tick(SESSION_MS - 1) == []
        events = state.tick(SESSION_MS)
        assert MemberRemoved("g", gone, "session timed out") in events
    assert state.describe("g").state is GroupState.PREPARING_REBALANCE
    with pytest.raises(UnknownMemberIdError):
        state.heartbeat("g", gone, generation, SESSION_MS)
    after = settle(state, "g", {m: {} for m in rest}, SESSION_MS)
    assert sorted(len(v) for v in after.values()) == [3, 3]
    assert set(before[gone]) <= {tp for v in after.values() for tp in v}
    assert state.describe("g").generation_id == generation + 1


def test_a_member_that_does_not_rejoin_in_time_is_dropped() -> None:
    state = new_state()
    a, _ = new_member(state, "g", 0)
    b, _ = new_member(state, "g", 0)  # rebalance starts; a never rejoins but keeps its session alive
    for now in range(0, REBALANCE_MS, SESSION_MS // 2):
        with pytest.raises(RebalanceInProgressError):
            state.heartbeat("g", a, 1, now)
        state.tick(now)
    events = state.tick(REBALANCE_MS)
    assert MemberRemoved("g", a, "did not rejoin within max.poll.interval.ms") in events
    completed = [e for e in events if isinstance(e, JoinCompleted)]
    assert [(e.member_id, e.result.generation_id) for e in completed] == [(b, 2)]


def test_initial_rebalance_delay_gathers_a_starting_fleet_into_one_generation() -> None:
    state = new_state(initial_rebalance_delay_ms=3_000)
    ids = [new_member(state, "g", now)[0] for now in (0, 1_000, 2_000)]
    assert state.tick(4_999) == []
    events = state.tick(5_000)
    results = {e.member_id: e.result for e in events if isinstance(e, JoinCompleted)}
    assert set(results) == set(ids)
    assert {r.generation_id for r in results.values()} == {1}


def test_static_member_restart_keeps_its_assignment_without_a_rebalance() -> None:
    state = new_state()
    a, _ = new_member(state, "g", 0, instance="pod-a")
    b, _ = new_member(state, "g", 0, instance="pod-b")
    before = settle(state, "g", {a: {"instance": "pod-a"}, b: {"instance": "pod-b"}}, 0)
    generation = state.describe("g").generation_id
    restarted = join(state, "g", "", 5_000, instance="pod-a")  # new process, same instance id
    assert isinstance(restarted, JoinResult)
    assert restarted.generation_id == generation
    assert restarted.member_id != a
    assert state.sync("g", restarted.member_id, generation, 5_000).assignment == tuple(before[a])
    state.heartbeat("g", b, generation, 5_000)  # no rebalance for the others
    assert state.describe("g").state is GroupState.STABLE
    with pytest.raises(FencedInstanceIdError):
        state.heartbeat("g", a, generation, 5_000, group_instance_id="pod-a")
    with pytest.raises(UnknownMemberIdError):
        state.heartbeat("g", a, generation, 5_000)
    with pytest.raises(FencedInstanceIdError):
        join(state, "g", a, 5_000, instance="pod-a")


def test_static_member_with_a_new_subscription_rebalances() -> None:
    state = new_state()
    _a, _ = new_member(state, "g", 0, instance="pod-a")
    result = join(state, "g", "", 100, instance="pod-a", topics=("t", "u"))
    assert isinstance(result, JoinResult)
    assert result.generation_id == 2
    assert len(state.sync("g", result.member_id, 2, 100).assignment) == 9


def test_static_member_leaves_by_instance_id() -> None:
    state = new_state()
    _a, _ = new_member(state, "g", 0, instance="pod-a")
    with pytest.raises(FencedInstanceIdError):
        state.leave("g", "someone-else", 10, group_instance_id="pod-a")
    state.leave("g", "", 10, group_instance_id="pod-a")
    assert state.describe("g").state is GroupState.DEAD  # nothing left: no members, no offsets


def test_cooperative_never_gives_a_partition_to_two_members() -> None:
    state = new_state()
    coop: dict[str, Any] = {"strategy": "cooperative-sticky"}
    a, _ = new_member(state, "g", 0, **coop)
    assert len(state.sync("g", a, 1, 0).assignment) == 6
    b, pending = new_member(state, "g", 10, **coop)
    assert isinstance(pending, Pending)
    join(state, "g", a, 20, **coop)  # a rejoins; the round completes
    state.tick(20)
    step_a = state.sync("g", a, 2, 20).assignment
    step_b = state.sync("g", b, 2, 20).assignment
    assert len(step_a) == 3
    assert step_b == ()
    with pytest.raises(RebalanceInProgressError):  # all synced: the follow-up round starts
        state.heartbeat("g", b, 2, 30)
    final = settle(state, "g", {a: coop, b: coop}, 40)
    assert final[a] == list(step_a)
    assert len(final[b]) == 3
    assert not set(final[a]) & set(final[b])


def test_heartbeat_and_sync_fencing() -> None:
    state = new_state()
    a, _ = new_member(state, "g", 0)
    with pytest.raises(IllegalGenerationError):
        state.heartbeat("g", a, 7, 0)
    with pytest.raises(IllegalGenerationError):
        state.sync("g", a, 0, 0)
    with pytest.raises(UnknownMemberIdError):
        state.heartbeat("g", "nobody", 1, 0)
    with pytest.raises(UnknownMemberIdError):
        state.heartbeat("no-such-group", a, 1, 0)
    with pytest.raises(UnknownMemberIdError):
        join(state, "g", "made-up", 0)


def test_a_retried_join_in_a_stable_group_does_not_rebalance() -> None:
    state = new_state()
    a, first = new_member(state, "g", 0)
    again = join(state, "g", a, 50)
    assert again == first
    assert state.describe("g").state is GroupState.STABLE


def test_topic_growth_rebalances_stable_groups() -> None:
    state = new_state()
    a, _ = new_member(state, "g", 0)
    state.set_topics({"t": 8, "u": 3}, 10)
    with pytest.raises(RebalanceInProgressError):
        state.heartbeat("g", a, 1, 10)
    assert len(settle(state, "g", {a: {}}, 20)[a]) == 8


def test_describe_and_list_groups() -> None:
    state = new_state()
    a, _ = new_member(state, "g", 0, client="app-1")
    b, _ = new_member(state, "g", 0, client="app-2", instance="pod-b")
    assignment = settle(state, "g", {a: {"client": "app-1"}, b: {"client": "app-2", "instance": "pod-b"}}, 0)
    d = state.describe("g")
    assert (d.state, d.protocol_type, d.protocol_name, d.generation_id) == (
        GroupState.STABLE,
        "consumer",
        "range",
        2,
    )
    rows = {m.member_id: m for m in d.members}
    assert rows[b].group_instance_id == "pod-b"
    assert rows[a].client_id == "app-1"
    assert {m: list(rows[m].assignment) for m in rows} == assignment
    assert rows[a].topics == ("t",)
    assert [(g.group_id, g.state) for g in state.list_groups()] == [("g", GroupState.STABLE)]
    assert state.describe("other").state is GroupState.DEAD


def test_a_join_waiting_when_its_member_leaves_is_answered_with_an_error() -> None:
    state = new_state()
    _a, _ = new_member(state, "g", 0)
    b, _ = new_member(state, "g", 0)  # b waits for a
    state.leave("g", b, 5)
    events = state.tick(5)
    failed = [e for e in events if isinstance(e, JoinFailed)]
    assert [e.member_id for e in failed] == [b]
    assert isinstance(failed[0].error, UnknownMemberIdError)
