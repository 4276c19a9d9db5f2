"""max.connections on the listener: with 3 slots, 3 clients work, a 4th is refused with a typed,
counted NETWORK_EXCEPTION while the 3 keep working, and once a client has been silent for
connections.max.idle.ms its slot goes to the 4th."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shmbroker import AdminClient, KafkaError, KafkaException
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration

IDLE_MS = 1500


def test_fourth_client_is_refused_until_one_idles_out(tmp_path: Path, free_port: int) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\n"max.connections" = 3\n"connections.max.idle.ms" = {IDLE_MS}\n')
    broker = BrokerProcess(tmp_path / "data", free_port, config=config).start()
    conf = {"bootstrap.servers": broker.address, "request.timeout.ms": 5000}
    clients = [AdminClient(conf) for _ in range(4)]  # one DEALER, so one routing id, each
    try:
        for client in clients[:3]:
            assert client.list_topics(timeout=5).topics == {}
        with pytest.raises(KafkaException) as info:
            clients[3].list_topics(timeout=5)
        error = info.value.args[0]
        assert error.code() == KafkaError.NETWORK_EXCEPTION and error.retriable()
        assert "max.connections=3" in error.str()
        status = clients[1].status()  # an admitted client is still served
        assert status["connections"] == 3
        assert status["counters"]["connections.refused"] == 1
        assert status["counters"]["errors.NETWORK_EXCEPTION"] == 1
        # Client 0 goes silent (it has no way to say goodbye that the ROUTER sees); 1 and 2 stay busy.
        deadline = time.monotonic() + IDLE_MS / 1000 + 0.5
        while time.monotonic() < deadline:
            for client in clients[1:3]:
                client.list_topics(timeout=5)
            time.sleep(0.2)
        assert clients[3].list_topics(timeout=5).topics == {}
        with pytest.raises(KafkaException):  # client 0 comes back: now it is the one left out
            clients[0].list_topics(timeout=5)
    finally:
        for client in clients:
            client.close()
        broker.stop()


def test_closed_clients_free_their_slots_at_once(tmp_path: Path, free_port: int) -> None:
    """A script that opens and closes clients in a loop must not lock everyone out for
    connections.max.idle.ms: a closing client says goodbye and its slot is free at once."""
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\n"max.connections" = 3\n"connections.max.idle.ms" = 600000\n')
    broker = BrokerProcess(tmp_path / "data", free_port, config=config).start()
    conf = {"bootstrap.servers": broker.address, "request.timeout.ms": 5000}
    try:
        for _ in range(20):
            client = AdminClient(conf)
            try:
                assert client.list_topics(timeout=5).topics == {}
            finally:
                client.close()
        last = AdminClient(conf)
        try:
            assert last.status()["connections"] <= 3
        finally:
            last.close()
    finally:
        broker.stop()
