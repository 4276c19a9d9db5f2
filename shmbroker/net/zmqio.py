"""Multipart send and receive for the hot request paths, without pyzmq's per-call Python layer.

pyzmq's ``send_multipart``/``recv_multipart`` are Python loops over its Cython ``send``/``recv``
that type-check every frame, OR ``zmq.SNDMORE`` (an ``IntFlag``: Python-level enum arithmetic) into
the flags, and ask ``getsockopt(RCVMORE)`` through the attribute layer per frame. Measured here
(pyzmq 27.3, inproc, 3- and 4-frame messages of one request's size): ``send_multipart`` 10.6 us,
the backend ``send`` per frame with int flags 1.9 us; ``recv_multipart(copy=False)`` 16-22 us, the
backend ``recv`` looping on ``Frame.more`` 4.6 us. At a few thousand requests a second on 2 cores that
is several percent of a core in the router and in each client, and every microsecond of CPU the
router spends is one a woken worker or client waits for (remote produce latency, issue #4).

The functions below call the backend class's methods directly (found in the socket class's MRO,
so nothing is imported from pyzmq's private modules); where no Cython backend is found (PyPy's
CFFI backend) they fall back to the public methods, same semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _backend_socket_class() -> Any:
    for cls in zmq.Socket.__mro__[1:]:
        if cls.__module__.startswith("zmq.backend") and hasattr(cls, "send") and hasattr(cls, "recv"):
            return cls
    return None


_BACKEND = _backend_socket_class()
_send = _BACKEND.send if _BACKEND is not None else zmq.Socket.send
_recv = _BACKEND.recv if _BACKEND is not None else zmq.Socket.recv
_get = _BACKEND.get if _BACKEND is not None and hasattr(_BACKEND, "get") else zmq.Socket.getsockopt


def send_frames(socket: zmq.Socket[Any], frames: Sequence[Any], *, copy: bool = True) -> None:
    """``send_multipart(frames, copy=copy)``. Frames must be bytes, memoryviews or zmq.Frames.

    ``copy=False`` only pays off for large frames (record data): libzmq copies small ones anyway,
    and pyzmq builds a Frame object for each. Callers pass ``copy=False`` when data frames follow.
    """
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(socket, frame, _SNDMORE if i < last else 0, copy)


def recv_frames(socket: zmq.Socket[Any], *, block: bool = False) -> list[zmq.Frame] | None:
    """One whole multipart message as zmq.Frames (no copy), or None if none is queued (non-blocking).

    A multipart message arrives atomically in ZeroMQ: once its first frame is readable, the rest
    are there. "Is one queued?" is asked with ZMQ_EVENTS (2.3 us) rather than a NOBLOCK recv that
    raises zmq.Again (6.2 us: the exception is built in Python), since empty looks are the common
    case in a producer's poll(0) loop.
    """
    if not block and not int(_get(socket, _EVENTS)) & _POLLIN:
        return None
    frame = _recv(socket, 0, False)
    frames = [frame]
    while frame.more:
        frame = _recv(socket, 0, False)
        frames.append(frame)
    return frames
