"""CURVE on the listener: a client whose key is in the allow-list gets in; an unknown key or no key
never completes the handshake (its request times out, typed); the broker keeps serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shmbroker import AdminClient, KafkaError, KafkaException, NewTopic
from tests.integration.broker_fixture import BrokerProcess

pytestmark = pytest.mark.integration


def keys(directory: Path, name: str) -> tuple[Path, Path]:
    subprocess.run(
        [sys.executable, "-m", "shmbroker", "keys", "generate", name, "--dir", str(directory)],
        check=True,
        capture_output=True,
        text=True,
    )
    return directory / f"{name}.key", directory / f"{name}.key_secret"


def test_curve_allows_listed_keys_only(tmp_path: Path, free_port: int) -> None:
    server_public, server_secret = keys(tmp_path / "server", "broker")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    good_public, good_secret = keys(tmp_path / "clients", "good")
    _bad_public, bad_secret = keys(tmp_path / "clients", "bad")
    good_public.rename(allowed / good_public.name)
    assert oct(server_secret.stat().st_mode & 0o777) == "0o600"
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[broker]\n"listener.curve.secret.key.file" = "{server_secret}"\n'
        f'"listener.curve.allowed.keys.dir" = "{allowed}"\n'
    )
    broker = BrokerProcess(tmp_path / "data", free_port, config=config).start()
    try:
        base = {"bootstrap.servers": broker.address, "request.timeout.ms": 1500}
        good = AdminClient(
            {
                **base,
                "shmbroker.curve.server.key.file": str(server_public),
                "shmbroker.curve.client.key.file": str(good_secret),
            }
        )
        good.create_topics([NewTopic("secret", 1)])["secret"].result()
        assert "secret" in good.list_topics().topics
        for conf in (
            {
                **base,
                "shmbroker.curve.server.key.file": str(server_public),
                "shmbroker.curve.client.key.file": str(bad_secret),
            },
            base,
        ):
            stranger = AdminClient(conf)
            with pytest.raises(KafkaException) as info:
                stranger.list_topics()
            assert info.value.args[0].code() == KafkaError.REQUEST_TIMED_OUT
            stranger.close()
        assert "secret" in good.list_topics().topics  # still serving the allowed client
        good.close()
    finally:
        broker.stop()


def test_non_loopback_listener_needs_curve(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmbroker",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "tcp://0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "listener.curve.secret.key.file" in result.stderr
