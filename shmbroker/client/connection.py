"""One client's ZeroMQ DEALER connection to a broker: requests out, replies matched by correlation id.

Used by every client for metadata, admin and lane hand-over, and as the data path when the broker
is remote. Every call has a deadline: ZeroMQ reconnects silently and drops an oversize message
without telling the sender, so a reply that does not come is reported as a timeout, never assumed.
Not thread-safe: one connection per client object, used from the thread that owns the client.
"""

from __future__ import annotations

import math
import time
from typing import Any

import zmq

from shmbroker.client.config import CommonConfig
from shmbroker.config import DEFAULT_LISTENER
from shmbroker.errors import RequestTimedOutError
from shmbroker.net.auth import apply_client_curve
from shmbroker.net.protocol import ApiKey, ClientState, Message
from shmbroker.net.zmqio import recv_frames, send_frames


def bootstrap_address(config: dict[str, Any]) -> str:
    """The first address of ``bootstrap.servers``; a bare ``host:port`` means ``tcp://host:port``."""
    servers = str(config.get("bootstrap.servers", DEFAULT_LISTENER)).split(",")[0].strip()
    return servers if "://" in servers else f"tcp://{servers}"


class Connection:
    def __init__(
        self, address: str, *, request_timeout_s: float = 30.0, curve: tuple[str, str] | None = None
    ) -> None:
        self.address = address
        self.request_timeout_s = request_timeout_s
        self._context: zmq.Context[Any] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)  # replies are bounded by what we have in flight
        if curve is not None:
            apply_client_curve(self._socket, *curve)
        self._socket.connect(address)
        self._state = ClientState()
        self._early: dict[int, Message] = {}

    @classmethod
    def for_config(cls, common: CommonConfig) -> Connection:
        """A connection as the client's config says: bootstrap address, request timeout, CURVE keys."""
        curve = None
        if common.curve_server_key_file:
            curve = (common.curve_server_key_file, common.curve_client_key_file)
        address = bootstrap_address({"bootstrap.servers": common.bootstrap_servers})
        return cls(address, request_timeout_s=common.request_timeout_ms / 1000, curve=curve)

    def send(self, api: ApiKey, body: dict[str, Any], data: list[Any] | None = None) -> int:
        """Send a request; its reply comes from ``receive`` or ``call``. Returns the correlation id."""
        correlation_id, frames = self._state.request(api, body, data)
        send_frames(self._socket, frames, copy=not data)  # record data goes without a copy
        return correlation_id

    def receive(self, timeout_s: float = 0.0) -> Message | None:
        """The next reply to arrive, or None when none came within ``timeout_s`` (rounded up to whole
        milliseconds, ZeroMQ's unit: a reply ends the wait as soon as it arrives)."""
        if self._early:
            return self._early.pop(next(iter(self._early)))
        deadline = time.monotonic() + timeout_s
        while True:
            # Look first: poll(0) costs a Poller per call, and poll(0) is what producers ask most.
            frames = recv_frames(self._socket)
            if frames is None:
                remaining_s = deadline - time.monotonic()
                # ZeroMQ waits in whole milliseconds: round up, since truncating turned every wait
                # under 1 ms (a producer's poll(0.0005)) into a busy loop until its deadline.
                if remaining_s <= 0 or not self._socket.poll(math.ceil(remaining_s * 1000), zmq.POLLIN):
                    return None
                frames = recv_frames(self._socket)
                if frames is None:
                    continue
            reply = self._state.receive([f.buffer for f in frames])
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
                return None

    def call(
        self,
        api: ApiKey,
        body: dict[str, Any],
        data: list[Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Message:
        """Send and wait for this request's reply; raise its typed error, or RequestTimedOutError."""
        return self.wait(self.send(api, body, data), api, timeout_s=timeout_s)

    def wait(self, correlation_id: int, api: ApiKey, *, timeout_s: float | None = None) -> Message:
        """Wait for the reply to a request already sent (``send``); raise as ``call`` does."""
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        early = self._early.pop(correlation_id, None)
        if early is not None:
            early.raise_for_error()
            return early
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._state.forget(correlation_id)
                raise RequestTimedOutError(
                    f"no reply to {api.name} from {self.address} within {timeout_s:.1f} s "
                    "(is `shmbroker serve` running there?)"
                )
            if not self._socket.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                continue
            frames = recv_frames(self._socket)
            if frames is None:
                continue
            reply = self._state.receive([f.buffer for f in frames])
            if reply is None:
                continue
            if reply.correlation_id == correlation_id:
                reply.raise_for_error()
                return reply
            self._early[reply.correlation_id] = reply  # someone else's reply: keep it for receive()

    def forget(self, correlation_id: int) -> None:
        self._state.forget(correlation_id)

    @property
    def in_flight(self) -> int:
        return len(self._state.in_flight)

    def close(self) -> None:
        # Say goodbye so the broker frees this client's max.connections slot now; a broker that is
        # gone never hears it, and closing does not wait (the message lingers in the background).
        try:
            _cid, frames = self._state.request(ApiKey.GOODBYE, {}, None)
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            pass
        self._socket.close(linger=200)
