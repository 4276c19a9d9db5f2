"""shmbroker: a Kafka-class log broker for one big multicore host.

The client mirrors confluent-kafka: code moves between this broker and a Kafka cluster by changing
``bootstrap.servers`` and this import.

The client names load on first use (PEP 562): every broker process imports this package, and the
client's imports (numpy, zmq's auth thread with asyncio and ssl, ...) cost ~0.3 s of start-up in the
supervisor and the fork server, which never use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shmbroker.client.admin import AdminClient
    from shmbroker.client.consumer import Consumer
    from shmbroker.client.producer import Producer
    from shmbroker.client.types import (
        OFFSET_BEGINNING,
        OFFSET_END,
        OFFSET_INVALID,
        OFFSET_STORED,
        TIMESTAMP_CREATE_TIME,
        TIMESTAMP_LOG_APPEND_TIME,
        TIMESTAMP_NOT_AVAILABLE,
        KafkaError,
        KafkaException,
        Message,
        NewTopic,
        TopicPartition,
    )

__version__ = "0.1.0"
__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "OFFSET_INVALID",
    "OFFSET_STORED",
    "TIMESTAMP_CREATE_TIME",
    "TIMESTAMP_LOG_APPEND_TIME",
    "TIMESTAMP_NOT_AVAILABLE",
    "AdminClient",
    "Consumer",
    "KafkaError",
    "KafkaException",
    "Message",
    "NewTopic",
    "Producer",
    "TopicPartition",
]

# Public name -> the module that defines it.
_CLASSES = {
    "AdminClient": "shmbroker.client.admin",
    "Consumer": "shmbroker.client.consumer",
    "Producer": "shmbroker.client.producer",
}
_HOME = _CLASSES | {name: "shmbroker.client.types" for name in __all__ if name not in _CLASSES}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'shmbroker' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
