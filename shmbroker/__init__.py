"""shmbroker: a Kafka-class log broker for one big multicore host."""

__version__ = "0.1.0"
