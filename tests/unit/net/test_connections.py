"""The listener's client table: max.connections admits, connections.max.idle.ms forgets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shmbroker.config import load_broker_config
from shmbroker.errors import InvalidConfigError
from shmbroker.net.connections import ConnectionTable


def test_admits_up_to_max_then_refuses_new_ids() -> None:
    table = ConnectionTable(3, 1000)
    assert all(table.try_admit(bytes([n]), now_s=0.0) for n in range(3))
    assert not table.try_admit(b"new", now_s=0.5)
    assert len(table) == 3 and b"new" not in table


def test_known_id_is_served_when_full() -> None:
    table = ConnectionTable(2, 1000)
    table.try_admit(b"a", 0.0)
    table.try_admit(b"b", 0.0)
    assert table.try_admit(b"a", 0.9)


def test_idle_id_is_forgotten_and_its_slot_reused() -> None:
    table = ConnectionTable(2, 1000)
    table.try_admit(b"a", 0.0)
    table.try_admit(b"b", 0.0)
    table.try_admit(b"a", 0.8)  # a stays active; b goes silent
    assert not table.try_admit(b"c", 0.9)
    assert table.try_admit(b"c", 1.01)  # b silent longer than the idle time: its slot is c's
    assert b"b" not in table and b"a" in table


def test_expire_forgets_only_the_silent() -> None:
    table = ConnectionTable(10, 500)
    for n in range(5):
        table.try_admit(bytes([n]), now_s=n * 0.1)
    assert table.expire(0.75) == 3  # seen at 0.0, 0.1, 0.2: silent > 0.5 s
    assert len(table) == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_table_never_exceeds_max(seed: int) -> None:
    rng = random.Random(seed)
    table = ConnectionTable(5, 300)
    now = 0.0
    for _ in range(2000):
        now += rng.random() * 0.05
        table.try_admit(rng.randbytes(1), now)
        assert len(table) <= 5


def test_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="max_connections=0"):
        ConnectionTable(0, 1000)


def test_broker_config_takes_the_kafka_connection_keys(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    assert (load_broker_config().max_connections, load_broker_config().connections_max_idle_ms) == (
        1000,
        600_000,
    )
    path.write_text('[broker]\n"max.connections" = 3\n"connections.max.idle.ms" = 1500\n')
    config = load_broker_config(path)
    assert (config.max_connections, config.connections_max_idle_ms) == (3, 1500)
    path.write_text('[broker]\n"max.connections" = 0\n')
    with pytest.raises(InvalidConfigError, match=r"max\.connections=0"):
        load_broker_config(path)
