from __future__ import annotations

import json
from pathlib import Path

import pytest

from shmbroker.config import LogConfig
from shmbroker.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from shmbroker.workers.topics import TopicStore, check_topic_name


@pytest.mark.parametrize("name", ["orders", "a.b-c_d", "x" * 249, "..a", "a.."])
def test_legal_topic_names(name: str) -> None:
    assert check_topic_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "../etc", "x" * 250, "nul\x00", "sp ace", "é", 5, None]
)
def test_hostile_topic_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidTopicError):
        check_topic_name(name)


def test_store_persists_and_refuses_bad_requests(tmp_path: Path) -> None:
    store = TopicStore(tmp_path)
    store.create("t", 3, {"retention.ms": "1000"}, LogConfig())
    with pytest.raises(TopicAlreadyExistsError):
        store.create("t", 1, {}, LogConfig())
    for bad in (0, -1, 2000, True, "3"):
        with pytest.raises(InvalidPartitionsError):
            store.create("u", bad, {}, LogConfig())  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError):
        store.create("u", 1, {"no.such.key": 1}, LogConfig())
    assert "u" not in store.topics
    again = TopicStore(tmp_path)
    assert again.get("t").partitions == 3
    assert again.get("t").log_config(LogConfig()).retention_ms == 1000
    with pytest.raises(UnknownTopicOrPartitionError):
        again.check_partition("t", 3)
    (tmp_path / "t-0").mkdir()
    again.delete("t")
    assert not (tmp_path / "t-0").exists()
    assert json.loads((tmp_path / "topics.json").read_text()) == {}
