"""Bounded resources and hostile input: bursts of joins, full groups, bad arguments; a random soak."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from shmbroker.errors import BrokerError, InvalidRequestError, InvalidTopicError
from shmbroker.workers.group_errors import (
    GroupMaxSizeReachedError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    MemberIdRequiredError,
    RebalanceInProgressError,
    TooManyGroupsError,
    UnknownMemberIdError,
)
from shmbroker.workers.group_types import (
    CoordinatorStatistics,
    JoinCompleted,
    JoinFailed,
    JoinResult,
    Pending,
)
from tests.unit.workers.group_helpers import REBALANCE_MS, SESSION_MS, join, new_member, new_state


def test_a_burst_of_joins_into_one_group_stays_bounded() -> None:
    state = new_state(max_members_per_group=1_000)
    started = time.perf_counter()
    required, refused = 0, 0
    for _ in range(5_000):
        try:
            join(state, "g", "", 0)
        except MemberIdRequiredError:
            required += 1
        except GroupMaxSizeReachedError:
            refused += 1
    assert (required, refused) == (1_000, 4_000)
    assert state.statistics().pending_member_ids == 1_000
    state.tick(SESSION_MS)  # nobody came back with its id: all forgotten, and so is the group
    assert state.statistics() == CoordinatorStatistics(groups=0, members=0, pending_member_ids=0, offsets=0)
    assert time.perf_counter() - started < 2.0


def test_a_full_group_of_a_thousand_members_forms_in_one_round() -> None:
    state = new_state(initial_rebalance_delay_ms=3_000, max_members_per_group=1_000)
    started = time.perf_counter()
    ids = [new_member(state, "g", 0)[0] for _ in range(1_000)]
    with pytest.raises(GroupMaxSizeReachedError):
        join(state, "g", "", 0)
    events = state.tick(3_000)
    results = [e.result for e in events if isinstance(e, JoinCompleted)]
    assert len(results) == 1_000
    assert {r.generation_id for r in results} == {1}
    sizes = [len(state.sync("g", m, 1, 3_000).assignment) for m in ids]
    assert sum(sizes) == 6
    assert max(sizes) == 1
    assert time.perf_counter() - started < 5.0


def test_too_many_groups_is_refused_and_idle_groups_are_forgotten() -> None:
    state = new_state(max_groups=100)
    for i in range(100):
        with pytest.raises(MemberIdRequiredError):
            join(state, f"g{i}", "", 0)
    with pytest.raises(TooManyGroupsError):
        join(state, "one-more", "", 0)
    state.tick(SESSION_MS)
    assert state.statistics().groups == 0
    with pytest.raises(MemberIdRequiredError):
        join(state, "one-more", "", SESSION_MS)


GOOD: dict[str, Any] = {
    "group_id": "g",
    "member_id": "",
    "group_instance_id": None,
    "client_id": "c",
    "session_timeout_ms": SESSION_MS,
    "rebalance_timeout_ms": REBALANCE_MS,
    "protocol_type": "consumer",
    "protocols": [("range", ["t"])],
    "now_ms": 0,
}


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("group_id", "", InvalidGroupIdError),
        ("group_id", None, InvalidGroupIdError),
        ("member_id", 5, InvalidRequestError),
        ("member_id", "m" * 10_000, InvalidRequestError),
        ("group_instance_id", "", InvalidRequestError),
        ("group_instance_id", "has space", InvalidRequestError),
        ("client_id", None, InvalidRequestError),
        ("client_id", "c" * 300, InvalidRequestError),
        ("session_timeout_ms", -1, InvalidSessionTimeoutError),
        ("session_timeout_ms", 10, InvalidSessionTimeoutError),
        ("session_timeout_ms", 10**12, InvalidSessionTimeoutError),
        ("session_timeout_ms", "10000", InvalidRequestError),
        ("session_timeout_ms", True, InvalidRequestError),
        ("rebalance_timeout_ms", -5, InvalidSessionTimeoutError),
        ("rebalance_timeout_ms", 0, InvalidSessionTimeoutError),
        ("protocol_type", "connect", InconsistentGroupProtocolError),
        ("protocols", [], InconsistentGroupProtocolError),
        ("protocols", "range", InconsistentGroupProtocolError),
        ("protocols", [("my-own-assignor", ["t"])], InconsistentGroupProtocolError),
        ("protocols", [("range", "t")], InvalidRequestError),
        ("protocols", [("range", ["../etc"])], InvalidTopicError),
        ("protocols", [("range", ["t"] * 2000)], InvalidRequestError),
        ("protocols", [42], InvalidRequestError),
        ("protocols", [(None, ["t"])], InvalidRequestError),
        ("now_ms", 1.5, InvalidRequestError),
    ],
)
def test_malformed_joins_get_typed_errors(field: str, value: object, error: type[BrokerError]) -> None:
    state = new_state()
    with pytest.raises(error):
        state.join(**{**GOOD, field: value})
    assert state.statistics().groups == 0  # nothing was stored


def test_protocols_as_dicts_and_an_incompatible_member() -> None:
    state = new_state()
    _a, result = new_member(state, "g", 0, strategy="roundrobin")
    assert isinstance(result, JoinResult)
    assert result.protocol_name == "roundrobin"
    with pytest.raises(InconsistentGroupProtocolError):
        join(state, "g", "", 0, strategy="range")
    args = {
        **GOOD,
        "protocols": [{"name": "range", "topics": ["t"]}, {"name": "roundrobin", "topics": ["t"]}],
    }
    with pytest.raises(MemberIdRequiredError):
        state.join(**args)


class Client:
    """One consumer process as the coordinator sees it: what it holds, which generation it is in."""

    def __init__(self, member_id: str, result: JoinResult | Pending) -> None:
        self.member_id, self.generation, self.holding = member_id, -1, frozenset[tuple[str, int]]()
        self.result = result if isinstance(result, JoinResult) else None


@pytest.mark.parametrize("seed", range(6))
def test_random_churn_never_gives_a_partition_to_two_holders(seed: int) -> None:
    """Consumers join, leave, crash (go silent until their session expires) and restart at random.
    Every client holds what its last SyncGroup gave it (eager ones drop everything before they
    rejoin), and no partition is ever held by two clients; once the group settles, all are held."""
    rng = random.Random(seed)
    strategy = ["range", "roundrobin", "cooperative-sticky"][seed % 3]
    state = new_state(topics={"t": 7, "u": 4})
    kw: dict[str, Any] = {"strategy": strategy, "topics": ("t", "u")}
    clients: dict[str, Client] = {}
    everything = {(t, p) for t, n in (("t", 7), ("u", 4)) for p in range(n)}
    now = 0

    def sync(client: Client, now: int) -> tuple[tuple[str, int], ...]:
        return state.sync("g", client.member_id, client.generation, now).assignment

    def deliver(events: list[Any]) -> None:
        for event in events:
            if isinstance(event, JoinCompleted) and event.member_id in clients:
                clients[event.member_id].result = event.result
            elif isinstance(event, JoinFailed) and event.member_id in clients:
                del clients[event.member_id]

    for step in range(400):
        now += rng.choice([0, 100, 1_000, 3_000])
        roll = rng.random()
        if roll < 0.12 and len(clients) < 6:
            member_id, result = new_member(state, "g", now, **kw)
            clients[member_id] = Client(member_id, result)
        elif roll < 0.14 and clients:
            state.leave("g", clients.pop(rng.choice(sorted(clients))).member_id, now)
        elif roll < 0.16 and clients:
            del clients[rng.choice(sorted(clients))]  # crashed: holds nothing, never heard from again
        deliver(state.tick(now))
        for client in list(clients.values()):
            if client.result is not None:  # its join completed: collect the assignment
                client.generation, client.result = client.result.generation_id, None
                try:
                    client.holding = frozenset(
                        state.sync("g", client.member_id, client.generation, now).assignment
                    )
                except BrokerError:
                    pass  # a rebalance began meanwhile; the next heartbeat says so
                continue
            try:
                state.heartbeat("g", client.member_id, client.generation, now)
            except UnknownMemberIdError:
                del clients[client.member_id]  # it restarts as a new member later (or not)
            except (RebalanceInProgressError, IllegalGenerationError):
                if strategy != "cooperative-sticky":
                    client.holding = frozenset()  # eager: revoke everything before rejoining
                result = join(state, "g", client.member_id, now, **kw)
                client.result = result if isinstance(result, JoinResult) else None
            deliver(state.tick(now))
        held = [tp for c in clients.values() for tp in c.holding]
        assert len(held) == len(set(held)), f"seed {seed} step {step}: a partition has two holders"
    for _ in range(15):  # settle: no churn; crashed members' sessions expire; a few rounds of heartbeats
        now += 1_500
        for client in list(clients.values()):
            if client.result is not None:
                client.generation, client.result = client.result.generation_id, None
                client.holding = frozenset(
                    state.sync("g", client.member_id, client.generation, now).assignment
                )
            else:
                try:
                    state.heartbeat("g", client.member_id, client.generation, now)
                except (RebalanceInProgressError, IllegalGenerationError):
                    if strategy != "cooperative-sticky":
                        client.holding = frozenset()
                    result = join(state, "g", client.member_id, now, **kw)
                    client.result = result if isinstance(result, JoinResult) else None
            deliver(state.tick(now))
    if clients:
        assert {tp for c in clients.values() for tp in c.holding} == everything


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s, m: s.heartbeat("g", m, "1", 0), InvalidRequestError),
        (lambda s, m: s.heartbeat("g", m, True, 0), InvalidRequestError),
        (lambda s, m: s.sync("g", m, None, 0), InvalidRequestError),
        (lambda s, m: s.heartbeat("g", 42, 1, 0), InvalidRequestError),
        (lambda s, m: s.heartbeat("g", m, 1, 0, group_instance_id=["x"]), InvalidRequestError),
        (lambda s, m: s.commit_offsets("g", m, "1", {}, 0), InvalidRequestError),
        (lambda s, m: s.leave("", m, 0), InvalidGroupIdError),
        (lambda s, m: s.fetch_offsets("g", "t-0"), InvalidRequestError),
        (lambda s, m: s.fetch_offsets("g", [("t", -1)]), InvalidRequestError),
    ],
)
def test_malformed_member_requests_get_typed_errors(call: Any, error: type[BrokerError]) -> None:
    state = new_state()
    member_id, _ = new_member(state, "g", 0)
    with pytest.raises(error):
        call(state, member_id)
    state.heartbeat("g", member_id, 1, 0)  # and the group is unharmed
