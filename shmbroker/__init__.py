"""shmbroker: a Kafka-class log broker for one big multicore host.

The client mirrors confluent-kafka: code moves between this broker and a Kafka cluster by changing
``bootstrap.servers`` and this import.
"""

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
