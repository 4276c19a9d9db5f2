"""Topics of one broker: names, partition counts and per-topic config, kept in ``<data>/topics.json``.

The supervisor owns this file and is its only writer; it rewrites it whole (temp file, fsync,
rename, fsync of the directory) so a crash leaves either the old or the new version. Partition
``p`` of topic ``t`` lives in ``<data>/<t>-<p>/``, as in Kafka, so the topic name check below is
also what keeps every path inside the data directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmbroker.config import LogConfig, log_config_from
from shmbroker.disk.files import fsync_dir
from shmbroker.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

# Kafka's rule: [a-zA-Z0-9._-], at most 249 characters, not "." or "..".
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
MAX_PARTITIONS = 1024
TOPICS_FILE = "topics.json"


def check_topic_name(name: object) -> str:
    """Return ``name`` if it is a legal topic name; InvalidTopicError naming the rule otherwise."""
    if not isinstance(name, str) or not TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        shown = repr(name)[:80]
        raise InvalidTopicError(
            f"topic name {shown} is invalid: use 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'"
        )
    return name


@dataclass
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, Any] = field(default_factory=dict)

    def log_config(self, base: LogConfig) -> LogConfig:
        return log_config_from(self.config, base)


class TopicStore:
    """The broker's topics. Not thread-safe; the supervisor is its one user."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.topics: dict[str, TopicSpec] = {}
        path = data_dir / TOPICS_FILE
        if path.exists():
            raw = json.loads(path.read_text())
            for name, entry in raw.items():
                self.topics[name] = TopicSpec(name, int(entry["partitions"]), dict(entry.get("config", {})))

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.data_dir / f"{topic}-{partition}"

    def get(self, topic: str) -> TopicSpec:
        spec = self.topics.get(topic)
        if spec is None:
            raise UnknownTopicOrPartitionError(f"unknown topic {topic!r}")
        return spec

    def check_partition(self, topic: str, partition: int) -> TopicSpec:
        spec = self.get(topic)
        if not 0 <= partition < spec.partitions:
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} has partitions 0..{spec.partitions - 1}; got {partition}"
            )
        return spec

    def create(self, name: str, partitions: int, config: dict[str, Any], base: LogConfig) -> TopicSpec:
        check_topic_name(name)
        if name in self.topics:
            raise TopicAlreadyExistsError(f"topic {name!r} already exists")
        if (
            isinstance(partitions, bool)
            or not isinstance(partitions, int)
            or not 1 <= partitions <= MAX_PARTITIONS
        ):
            raise InvalidPartitionsError(f"num_partitions {partitions!r}: 1..{MAX_PARTITIONS}")
        if not isinstance(config, dict):
            raise InvalidConfigError("topic config must be a mapping of Kafka keys to values")
        spec = TopicSpec(name, partitions, {str(k): v for k, v in config.items()})
        spec.log_config(base)  # refuses unknown keys and bad values before anything is written
        self.topics[name] = spec
        self._save()
        return spec

    def delete(self, name: str) -> TopicSpec:
        spec = self.get(name)
        del self.topics[name]
        self._save()
        for p in range(spec.partitions):
            shutil.rmtree(self.partition_dir(name, p), ignore_errors=True)
        fsync_dir(self.data_dir)
        return spec

    def _save(self) -> None:
        path = self.data_dir / TOPICS_FILE
        tmp = path.with_suffix(".tmp")
        payload = {
            n: {"partitions": s.partitions, "config": s.config} for n, s in sorted(self.topics.items())
        }
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.data_dir)
