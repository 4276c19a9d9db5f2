"""One request in, typed error replies out: the rule the router and the supervisor both follow.

Every request that fails gets a reply with Kafka's code and a message, counted by error name; a
message that cannot be decoded at all is counted and dropped (there is nobody to answer). Nothing
a client sends may end the serving loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from shmbroker.errors import BrokerError, InvalidRequestError, RemoteProtocolError
from shmbroker.net import protocol
from shmbroker.net.protocol import Message

log = logging.getLogger(__name__)

Handler = Callable[[Message], "list[Any] | None"]


def answer(frames: list[Any], counters: Counter[str], handler: Handler) -> list[Any] | None:
    """Decode ``frames`` and run ``handler``; its reply, or a typed error reply, or None."""
    try:
        request = protocol.decode(frames)
    except RemoteProtocolError as exc:
        counters["malformed"] += 1
        log.info("dropping malformed message: %s", exc)
        return None
    counters[f"requests.{request.api.name}"] += 1
    try:
        return handler(request)
    except BrokerError as exc:
        counters[f"errors.{exc.kafka_name}"] += 1
        return protocol.encode_error_reply(request, exc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a body of the wrong shape
        counters["errors.INVALID_REQUEST"] += 1
        return protocol.encode_error_reply(request, InvalidRequestError(f"{request.api.name}: {exc!r}"))
    except Exception as exc:  # a bug of ours: answer, count, log; one request must not stop the loop
        counters["errors.UNKNOWN_SERVER_ERROR"] += 1
        log.exception("%s request failed", request.api.name)
        return protocol.encode_error_reply(request, BrokerError(f"{request.api.name} failed: {exc!r}"))
