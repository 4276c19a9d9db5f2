"""Client pieces without a broker: config keys, errors, partitioner, Message."""

from __future__ import annotations

import os

import pytest

from shmbroker import KafkaError, KafkaException, Message, TopicPartition
from shmbroker.client.config import ConsumerConfig, ProducerConfig
from shmbroker.client.partitioner import KeyPartitioner, murmur2
from shmbroker.config import load_broker_config, log_config_from
from shmbroker.errors import InvalidConfigError
from shmbroker.records import Codec


def test_producer_config_takes_kafka_keys() -> None:
    conf = ProducerConfig.from_dict(
        {
            "bootstrap.servers": "127.0.0.1:9093",
            "acks": "all",
            "linger.ms": 0,
            "compression.type": "lz4",
            "batch.size": 65536,
            "client.id": "x",
        }
    )
    assert (conf.acks, conf.linger_ms, conf.codec, conf.batch_size) == (-1, 0, Codec.LZ4, 65536)


@pytest.mark.parametrize(
    "bad",
    [
        {"acks": "2"},
        {"compression.type": "brotli"},
        {"linger.ms": -1},
        {"no.such.property": 1},
        {"shmbroker.transport": "carrier-pigeon"},
    ],
)
def test_producer_config_refuses_what_confluent_kafka_refuses(bad: dict) -> None:
    with pytest.raises(KafkaException) as info:
        ProducerConfig.from_dict(bad)
    assert info.value.args[0].code() == KafkaError._INVALID_ARG


def test_consumer_config_maps_offset_reset_aliases() -> None:
    assert ConsumerConfig.from_dict({"auto.offset.reset": "smallest"}).auto_offset_reset == "earliest"
    with pytest.raises(KafkaException):
        ConsumerConfig.from_dict({"auto.offset.reset": "middle"})


def test_murmur2_matches_kafka_python() -> None:
    from kafka.partitioner.default import murmur2 as reference

    for n in range(64):
        key = os.urandom(n)
        assert murmur2(key) & 0x7FFFFFFF == reference(key) & 0x7FFFFFFF
    assert KeyPartitioner()(b"21", 10) == (reference(b"21") & 0x7FFFFFFF) % 10


def test_kafka_error_and_message_shapes() -> None:
    err = KafkaError(KafkaError._MSG_TIMED_OUT, "late")
    assert err.name() == "_MSG_TIMED_OUT" and err.str() == "late" and err.retriable()
    assert err == KafkaError._MSG_TIMED_OUT
    msg = Message.make("t", 1, 5, b"k", b"value", (1, 99), [("h", b"v")])
    assert (msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), len(msg)) == (
        "t",
        1,
        5,
        b"k",
        b"value",
        5,
    )
    assert msg.timestamp() == (1, 99) and msg.headers() == [("h", b"v")] and msg.error() is None
    msg.set_value(b"x")
    assert msg.value() == b"x"
    assert TopicPartition("t", 1, 5) == TopicPartition("t", 1)


def test_broker_config_keys_and_toml(tmp_path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[broker]\n"log.segment.bytes" = 65536\n"num.partitions" = 4\n"log.dirs" = "/tmp/x"\n')
    config = load_broker_config(path)
    assert (
        config.log.segment_bytes == 65536 and config.num_partitions == 4 and str(config.data_dir) == "/tmp/x"
    )
    path.write_text('[broker]\n"log.segmnet.bytes" = 1\n')
    with pytest.raises(InvalidConfigError, match=r"log\.segmnet\.bytes"):
        load_broker_config(path)
    with pytest.raises(InvalidConfigError):
        log_config_from({"segment.bytes": "lots"})


def test_spin_keys_take_microseconds_and_refuse_the_out_of_range(tmp_path) -> None:
    assert ProducerConfig.from_dict({}).poll_spin_us == 100
    assert ProducerConfig.from_dict({"shmbroker.poll.spin.us": "0"}).poll_spin_us == 0
    for bad in (-1, 2_000_000, "soon"):
        with pytest.raises(KafkaException) as info:
            ProducerConfig.from_dict({"shmbroker.poll.spin.us": bad})
        assert info.value.args[0].code() == KafkaError._INVALID_ARG
    path = tmp_path / "b.toml"
    assert load_broker_config().worker_spin_us == 200
    path.write_text('[broker]\n"shm.worker.spin.us" = 0\n')
    assert load_broker_config(path).worker_spin_us == 0
    path.write_text('[broker]\n"shm.worker.spin.us" = -3\n')
    with pytest.raises(InvalidConfigError, match=r"shm\.worker\.spin\.us"):
        load_broker_config(path)
