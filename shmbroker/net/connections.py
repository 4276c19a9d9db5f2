"""Which remote clients the listener serves: ``max.connections`` and ``connections.max.idle.ms``.

A ZeroMQ ROUTER accepts every peer by itself and has no accept hook (ROUTER_NOTIFY is a libzmq draft
option, absent from the stock build), so a "connection" here is a routing id (one per client DEALER
socket) seen within the last ``connections.max.idle.ms``. A request from an id already in the table
refreshes it; one from a new id is admitted while fewer than ``max.connections`` are held, and
refused otherwise. Ids silent for longer than the idle time are forgotten, oldest first, so the
table never holds more than ``max.connections`` entries. A client that disconnects keeps its slot
until it idles out: without a disconnect event that is the earliest we can know. Sans-I/O: the
caller passes ``now_s``; one listener thread owns it.
"""

from __future__ import annotations

from collections import OrderedDict


class ConnectionTable:
    def __init__(self, max_connections: int, max_idle_ms: int) -> None:
        if max_connections < 1 or max_idle_ms < 1:
            raise ValueError(f"max_connections={max_connections}, max_idle_ms={max_idle_ms}: both >= 1")
        self.max_connections = max_connections
        self._max_idle_s = max_idle_ms / 1000
        # routing id -> last request time; least recently seen first, so expiry pops from the front.
        self._last_seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last_seen)

    def __contains__(self, identity: object) -> bool:
        return identity in self._last_seen

    def try_admit(self, identity: bytes, now_s: float) -> bool:
        """Record a request from ``identity``; False (table unchanged) if it is new and no slot is free."""
        if identity in self._last_seen:
            self._last_seen[identity] = now_s
            self._last_seen.move_to_end(identity)
            return True
        self.expire(now_s)
        if len(self._last_seen) >= self.max_connections:
            return False
        self._last_seen[identity] = now_s
        return True

    def forget(self, identity: bytes) -> None:
        """The client said goodbye: its slot is free now, not after the idle time."""
        self._last_seen.pop(identity, None)

    def expire(self, now_s: float) -> int:
        """Forget every id silent for longer than the idle time; return how many went."""
        cutoff, gone = now_s - self._max_idle_s, 0
        while self._last_seen:
            identity, seen = next(iter(self._last_seen.items()))
            if seen >= cutoff:
                break
            del self._last_seen[identity]
            gone += 1
        return gone
