"""CURVE authentication for the ZeroMQ listener: key files, the server side, the client side.

ZeroMQ's CURVE encrypts and authenticates a connection with Curve25519 key pairs; *which* client
keys are welcome is decided by a ZAP handler. Without one, libzmq accepts any client key (checked
here: FACTS.md), so the broker always runs pyzmq's ThreadAuthenticator with an allow-list: the
directory of client public key files (``*.key``), as written by ``shmbroker keys generate``.
A client whose key is not in the list never completes the handshake; its requests time out.

Key files are ZeroMQ's certificate format (zmq.auth): ``NAME.key`` holds the public key,
``NAME.key_secret`` the public and secret keys (mode 0600). Hand the server's ``.key`` to clients
and each client's ``.key`` to the broker's allow directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shmbroker.errors import InvalidConfigError


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (0600) into ``directory``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(directory, name))
    os.chmod(secret, 0o600)
    return public, secret


def load_keys(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys from a certificate file; InvalidConfigError naming the file."""
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise InvalidConfigError(f"cannot read CURVE key file {path}: {exc}") from exc
    if secret and secret_key is None:
        raise InvalidConfigError(f"{path} holds no secret key; use the .key_secret file")
    return public_key, secret_key


@dataclass(frozen=True)
class CurveServer:
    """The listener's CURVE settings: its own key pair and the allowed client keys."""

    secret_key_file: Path
    allowed_keys_dir: Path

    def apply(self, context: zmq.Context[Any], socket: zmq.Socket[Any]) -> ThreadAuthenticator:
        """Start the ZAP handler on ``context`` and make ``socket`` a CURVE server (before bind)."""
        if not self.allowed_keys_dir.is_dir():
            raise InvalidConfigError(f"CURVE allow-list directory {self.allowed_keys_dir} does not exist")
        public_key, secret_key = load_keys(self.secret_key_file, secret=True)
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        # Only keys found in the directory get in (zmq.auth reads every *.key there).
        authenticator.configure_curve(domain="*", location=str(self.allowed_keys_dir))
        socket.curve_secretkey = secret_key
        socket.curve_publickey = public_key
        socket.curve_server = True
        return authenticator


def apply_client_curve(socket: zmq.Socket[Any], server_key_file: str, client_secret_file: str) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is in ``server_key_file``."""
    server_public, _ = load_keys(Path(server_key_file), secret=False)
    client_public, client_secret = load_keys(Path(client_secret_file), secret=True)
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret
