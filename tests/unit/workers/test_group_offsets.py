"""Offset commit and fetch through the coordinator: fencing, ownership, simple commits, resets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shmbroker.errors import InvalidRequestError, UnknownTopicOrPartitionError
from shmbroker.workers.group_errors import (
    GroupIdNotFoundError,
    IllegalGenerationError,
    InvalidGroupIdError,
    NonEmptyGroupError,
    OffsetMetadataTooLargeError,
    PartitionNotAssignedError,
    UnknownMemberIdError,
)
from shmbroker.workers.group_state import GroupCoordinatorState
from shmbroker.workers.offset_store import OffsetStore, StoredOffset
from tests.unit.workers.group_helpers import join, new_member, new_state, settle


def two_member_group(state: GroupCoordinatorState) -> tuple[str, str, dict[str, list[tuple[str, int]]]]:
    a, _ = new_member(state, "g", 0)
    b, _ = new_member(state, "g", 0)
    return a, b, settle(state, "g", {a: {}, b: {}}, 0)


def test_offsets_committed_by_owners_are_fetched_back() -> None:
    state = new_state()
    a, b, assignment = two_member_group(state)
    generation = state.describe("g").generation_id
    mine = {tp: (100 + tp[1], f"by {a}") for tp in assignment[a]}
    assert state.commit_offsets("g", a, generation, mine, 10) == mine
    assert state.fetch_offsets("g") == mine
    wanted = [assignment[a][0], assignment[b][0]]
    assert state.fetch_offsets("g", wanted) == {wanted[0]: mine[wanted[0]], wanted[1]: (-1, "")}
    assert state.fetch_offsets("unknown-group") == {}


def test_stale_generation_and_unknown_member_commits_are_refused() -> None:
    state = new_state()
    a, _b, assignment = two_member_group(state)
    generation = state.describe("g").generation_id
    offsets = {assignment[a][0]: (1, "")}
    with pytest.raises(IllegalGenerationError):
        state.commit_offsets("g", a, generation - 1, offsets, 10)
    with pytest.raises(UnknownMemberIdError):
        state.commit_offsets("g", "ghost", generation, offsets, 10)
    with pytest.raises(IllegalGenerationError):  # Kafka's answer for a group that does not exist
        state.commit_offsets("nope", a, generation, offsets, 10)
    assert state.fetch_offsets("g") == {}


def test_a_commit_for_a_partition_the_member_does_not_own_is_refused_whole() -> None:
    state = new_state()
    a, b, assignment = two_member_group(state)
    generation = state.describe("g").generation_id
    with pytest.raises(PartitionNotAssignedError) as info:
        state.commit_offsets("g", a, generation, {assignment[a][0]: (1, ""), assignment[b][0]: (1, "")}, 10)
    assert info.value.kafka_code == IllegalGenerationError.kafka_code
    assert state.fetch_offsets("g") == {}  # all or nothing


def test_commits_during_a_rebalance_use_the_old_generation_as_in_kafka() -> None:
    state = new_state()
    a, b, assignment = two_member_group(state)
    generation = state.describe("g").generation_id
    state.leave("g", b, 5)
    # a revokes (eager) and commits before rejoining: still generation `generation`, still its partitions
    state.commit_offsets("g", a, generation, {assignment[a][0]: (9, "")}, 6)
    assert state.fetch_offsets("g") == {assignment[a][0]: (9, "")}


def test_cooperative_member_may_commit_what_it_just_revoked() -> None:
    state = new_state()
    coop: dict[str, Any] = {"strategy": "cooperative-sticky"}
    a, _ = new_member(state, "g", 0, **coop)
    state.sync("g", a, 1, 0)
    _b, _ = new_member(state, "g", 10, **coop)
    join(state, "g", a, 20, **coop)
    state.tick(20)
    kept = state.sync("g", a, 2, 20).assignment
    revoked = sorted({("t", p) for p in range(6)} - set(kept))
    state.commit_offsets("g", a, 2, {tp: (5, "on revoke") for tp in revoked}, 21)
    assert all(state.fetch_offsets("g")[tp] == (5, "on revoke") for tp in revoked)


def test_simple_commits_only_reach_groups_without_members() -> None:
    state = new_state()
    assert state.commit_offsets("solo", "", -1, {("t", 0): (3, "")}, 0) == {("t", 0): (3, "")}
    assert state.fetch_offsets("solo") == {("t", 0): (3, "")}
    _a, _b, _ = two_member_group(state)
    with pytest.raises(UnknownMemberIdError):
        state.commit_offsets("g", "", -1, {("t", 0): (3, "")}, 0)


def test_reset_and_delete_need_an_empty_group() -> None:
    state = new_state()
    a, b, _ = two_member_group(state)
    with pytest.raises(NonEmptyGroupError):
        state.reset_offsets("g", {("t", 0): (0, "")})
    with pytest.raises(NonEmptyGroupError):
        state.delete_group("g")
    state.leave("g", a, 1)
    state.leave("g", b, 1)
    assert state.reset_offsets("g", {("t", 0): 42}) == {("t", 0): (42, "")}
    state.delete_group("g")
    assert state.fetch_offsets("g") == {}
    with pytest.raises(GroupIdNotFoundError):
        state.delete_group("g")


@pytest.mark.parametrize(
    ("offsets", "error"),
    [
        ({("nope", 0): (1, "")}, UnknownTopicOrPartitionError),
        ({("t", 6): (1, "")}, UnknownTopicOrPartitionError),
        ({("t", 0): (-5, "")}, InvalidRequestError),
        ({("t", 0): (2**63, "")}, InvalidRequestError),
        ({("t", 0): ("7", "")}, InvalidRequestError),
        ({("t", 0): (True, "")}, InvalidRequestError),
        ({("t", 0): (1, 5)}, InvalidRequestError),
        ({("t", 0): (1, "\ud800")}, InvalidRequestError),
        ({("t", 0): (1, "x" * 4097)}, OffsetMetadataTooLargeError),
        ({("t", 0): (1, "é" * 2049)}, OffsetMetadataTooLargeError),  # 4098 UTF-8 bytes
        ({("t", "0"): (1, "")}, InvalidRequestError),
        ({"t-0": (1, "")}, InvalidRequestError),
        ([(("t", 0), (1, ""))], InvalidRequestError),
    ],
)
def test_malformed_commits_get_typed_errors(offsets: object, error: type[Exception]) -> None:
    state = new_state()
    with pytest.raises(error):
        state.commit_offsets("g", "", -1, offsets, 0)  # type: ignore[arg-type]
    assert state.statistics().groups == 0  # a refused commit leaves nothing behind


@pytest.mark.parametrize("group_id", ["", None, 7, "x" * 256, "\ud800"])
def test_bad_group_ids_are_refused(group_id: object) -> None:
    state = new_state()
    with pytest.raises(InvalidGroupIdError):
        state.commit_offsets(group_id, "", -1, {}, 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidGroupIdError):
        state.fetch_offsets(group_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidGroupIdError):
        state.describe(group_id)  # type: ignore[arg-type]


def test_offsets_survive_a_restart_through_the_store(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path / "offsets.log")
    state = new_state()
    accepted = state.commit_offsets("g", "", -1, {("t", 1): (10, "m"), ("u", 2): (3, "")}, 0)
    store.commit("g", accepted, commit_ms=0)  # what the coordinator does before it replies
    store.close()
    reopened = OffsetStore(tmp_path / "offsets.log")
    again = GroupCoordinatorState(offsets=reopened.load())
    assert again.fetch_offsets("g") == accepted
    reopened.compact(again.all_offsets(), commit_ms=5)  # the table the coordinator holds is enough
    reopened.close()
    assert OffsetStore(tmp_path / "offsets.log").load() == {
        "g": {tp: StoredOffset(o, m, 5) for tp, (o, m) in accepted.items()}
    }
