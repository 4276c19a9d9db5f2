"""Drivers for the sans-I/O coordinator: play the client side of join/sync/heartbeat rounds."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from shmbroker.workers.group_errors import MemberIdRequiredError, RebalanceInProgressError
from shmbroker.workers.group_state import GroupCoordinatorState
from shmbroker.workers.group_types import CoordinatorConfig, JoinCompleted, JoinResult, Pending

SESSION_MS, REBALANCE_MS = 10_000, 30_000
CONFIG = CoordinatorConfig(initial_rebalance_delay_ms=0)


def new_state(topics: dict[str, int] | None = None, **config: Any) -> GroupCoordinatorState:
    counter = itertools.count()
    return GroupCoordinatorState(
        replace(CONFIG, **config),
        partitions_per_topic=topics or {"t": 6, "u": 3},
        new_member_suffix=lambda: f"{next(counter):04d}",
    )


def join(
    state: GroupCoordinatorState,
    group: str,
    member_id: str,
    now_ms: int,
    *,
    strategy: str = "range",
    topics: tuple[str, ...] = ("t",),
    instance: str | None = None,
    client: str = "cli",
) -> JoinResult | Pending:
    return state.join(
        group,
        member_id,
        instance,
        client,
        SESSION_MS,
        REBALANCE_MS,
        "consumer",
        [(strategy, list(topics))],
        now_ms,
    )


def new_member(
    state: GroupCoordinatorState, group: str, now_ms: int, **kw: Any
) -> tuple[str, JoinResult | Pending]:
    """The KIP-394 dance: an empty member id gets MEMBER_ID_REQUIRED, then joins with the id given."""
    if kw.get("instance") is not None:
        result = join(state, group, "", now_ms, **kw)
        return result.member_id, result
    try:
        join(state, group, "", now_ms, **kw)
    except MemberIdRequiredError as exc:
        return exc.member_id, join(state, group, exc.member_id, now_ms, **kw)
    raise AssertionError("an empty member id must get MEMBER_ID_REQUIRED")


def rebalance(
    state: GroupCoordinatorState, group: str, members: dict[str, dict[str, Any]], now_ms: int
) -> dict[str, JoinResult]:
    """Every member rejoins (as a heartbeat answering REBALANCE_IN_PROGRESS makes it); the results."""
    results: dict[str, JoinResult] = {}
    for member_id, kw in members.items():
        out = join(state, group, member_id, now_ms, **kw)
        if isinstance(out, JoinResult):
            results[member_id] = out
    for event in state.tick(now_ms):
        if isinstance(event, JoinCompleted):
            results[event.member_id] = event.result
    return results


def settle(
    state: GroupCoordinatorState, group: str, members: dict[str, dict[str, Any]], now_ms: int, rounds: int = 4
) -> dict[str, list[tuple[str, int]]]:
    """Rejoin and sync until heartbeats stop asking for rebalances; every synced assignment."""
    for _ in range(rounds):
        results = rebalance(state, group, members, now_ms)
        assert set(results) == set(members), "the round did not complete"
        assignment = {
            m: list(state.sync(group, m, r.generation_id, now_ms).assignment) for m, r in results.items()
        }
        generation = next(iter(results.values())).generation_id
        try:
            for m in members:
                state.heartbeat(group, m, generation, now_ms)
        except RebalanceInProgressError:
            continue
        return assignment
    raise AssertionError(f"no stable assignment after {rounds} rounds")
