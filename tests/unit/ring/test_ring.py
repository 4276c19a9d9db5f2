"""The SPSC frame ring over a bytearray: layout, wraparound, PAD, full, limits, hostile cursors."""

from __future__ import annotations

import random
import struct
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmbroker.errors import BrokenError
from shmbroker.ring.layout import (
    DATA_OFFSET,
    FRAME_HEADER,
    POSITION,
    READ_POSITION_OFFSET,
    RING_HEADER,
    WRITE_POSITION_OFFSET,
    align,
    attach_ring,
    get_name,
    init_ring,
    put_ascii,
    ring_bytes,
)
from shmbroker.ring.ring import FrameType, RingReader, RingWriter
from tests.unit.ring.conftest import new_region


def ends(region: memoryview) -> tuple[RingWriter, RingReader]:
    return RingWriter(region[:]), RingReader(region[:])


def payloads(reader: RingReader, max_bytes: int = 1 << 30) -> list[bytes]:
    return [bytes(payload) for _, _, _, payload in reader.peek(max_bytes)]


def test_layout_is_pinned() -> None:
    assert (RING_HEADER.size, FRAME_HEADER.size, POSITION.size) == (16, 16, 8)
    assert (WRITE_POSITION_OFFSET, READ_POSITION_OFFSET, DATA_OFFSET) == (64, 128, 192)
    assert ring_bytes(1024) == 1216
    assert [align(n) for n in (0, 1, 16, 17)] == [0, 16, 16, 32]


def test_rejects_bad_capacity() -> None:
    for capacity in (0, 32, 1000):
        with pytest.raises(ValueError, match="power of two"):
            ring_bytes(capacity)


def test_frames_round_trip_with_type_flags_and_tag(region: memoryview) -> None:
    writer, reader = ends(region)
    assert writer.try_write(FrameType.BATCH, b"hello", flags=2, tag=7)
    assert writer.try_write(FrameType.BATCH, memoryview(b"world!"), tag=2**64 - 1)
    frames = reader.peek(4096)
    assert [(t, flags, tag, bytes(p)) for t, flags, tag, p in frames] == [
        (FrameType.BATCH, 2, 7, b"hello"),
        (FrameType.BATCH, 0, 2**64 - 1, b"world!"),
    ]
    assert reader.peek(4096) == []  # peeked frames are not handed out twice
    assert reader.release() == 64
    assert POSITION.unpack_from(region, READ_POSITION_OFFSET)[0] == 64


def test_release_invalidates_handed_out_views(region: memoryview) -> None:
    writer, reader = ends(region)
    writer.try_write(FrameType.BATCH, b"x" * 10)
    ((_, _, _, payload),) = reader.peek(4096)
    reader.release()
    with pytest.raises(ValueError, match="released"):
        bytes(payload)


def test_payload_views_are_writable_in_place(region: memoryview) -> None:
    writer, reader = ends(region)
    writer.try_write(FrameType.BATCH, bytes(16))
    ((_, _, _, payload),) = reader.peek(4096)
    struct.pack_into(">q", payload, 0, 1234)  # what a worker does to stamp base_offset
    assert bytes(region[DATA_OFFSET + 16 : DATA_OFFSET + 24]) == struct.pack(">q", 1234)


def test_wraparound_pads_the_tail_so_frames_never_wrap() -> None:
    region = new_region(256)
    writer, reader = ends(region)
    assert writer.try_write(FrameType.BATCH, b"a" * 100)  # 128 bytes
    assert writer.try_write(FrameType.BATCH, b"b" * 90)  # 112 bytes: 16 left before the end
    assert payloads(reader) == [b"a" * 100, b"b" * 90]
    reader.release()
    assert writer.try_write(FrameType.BATCH, b"c" * 90)  # 112 > 16: PAD 16, frame at slot 0
    assert POSITION.unpack_from(region, WRITE_POSITION_OFFSET)[0] == 240 + 16 + 112
    assert FRAME_HEADER.unpack_from(region, DATA_OFFSET + 240)[:2] == (16, FrameType.PAD)
    assert payloads(reader) == [b"c" * 90]
    assert bytes(region[DATA_OFFSET + 16 : DATA_OFFSET + 106]) == b"c" * 90
    assert reader.release() == 16 + 112  # the PAD is released with the frame after it


def test_full_ring_writes_nothing_and_returns_false() -> None:
    region = new_region(256)
    writer, reader = ends(region)
    assert writer.try_write(FrameType.BATCH, b"a" * 100)  # 128 bytes
    assert writer.try_write(FrameType.BATCH, b"b" * 80)  # 96 bytes; 32 free
    before = bytes(region)
    assert not writer.try_write(FrameType.BATCH, b"c" * 17)  # needs 48
    assert bytes(region) == before
    assert payloads(reader) == [b"a" * 100, b"b" * 80]
    reader.release()
    assert writer.try_write(FrameType.BATCH, b"c" * 17)


def test_exactly_full_then_one_more_byte() -> None:
    region = new_region(256)
    writer, reader = ends(region)
    for _ in range(4):
        assert writer.try_write(FrameType.BATCH, bytes(48))  # 64 bytes each: exactly 256
    assert writer.statistics().used_bytes == 256
    assert not writer.try_write(FrameType.BATCH, b"")  # even an empty frame needs 16 bytes
    assert len(reader.peek(1 << 20)) == 4
    reader.release()
    assert writer.try_write(FrameType.BATCH, b"")


def test_max_frame_is_half_the_ring_and_always_fits_eventually() -> None:
    region = new_region(256)
    writer, reader = ends(region)
    assert writer.max_payload_bytes == 128 - 16
    with pytest.raises(ValueError, match="at most"):
        writer.try_write(FrameType.BATCH, bytes(writer.max_payload_bytes + 1))
    assert writer.try_write(FrameType.BATCH, bytes(16))  # shift the slot so the big frame must pad
    reader.peek(1 << 20)
    reader.release()
    for _ in range(10):
        assert writer.try_write(FrameType.BATCH, bytes(writer.max_payload_bytes))
        assert [len(p) for p in payloads(reader)] == [writer.max_payload_bytes]
        reader.release()


def test_peek_respects_max_bytes_but_returns_at_least_one_frame(region: memoryview) -> None:
    writer, reader = ends(region)
    for i in range(5):
        writer.try_write(FrameType.BATCH, bytes([i]) * 40)  # 64 bytes each
    assert [p[0] for p in payloads(reader, 130)] == [0, 1]
    assert [p[0] for p in payloads(reader, 1)] == [2]
    assert [p[0] for p in payloads(reader, 1000)] == [3, 4]
    assert reader.release() == 5 * 64


def test_statistics_and_committed_bytes(region: memoryview) -> None:
    writer, reader = ends(region)
    writer.try_write(FrameType.BATCH, bytes(10))
    assert reader.committed_bytes() == 32
    assert writer.unread_bytes() == 32
    reader.peek(100)
    assert reader.committed_bytes() == 0
    reader.release()
    assert writer.unread_bytes() == 0
    assert reader.statistics().used_bytes == 0


def test_ends_resume_from_the_cursors_in_memory(region: memoryview) -> None:
    writer, reader = ends(region)
    writer.try_write(FrameType.BATCH, b"one")
    writer.try_write(FrameType.BATCH, b"two")
    reader.peek(1)
    reader.release()
    writer2, reader2 = ends(region)  # e.g. a restarted worker and a re-attached producer
    writer2.try_write(FrameType.BATCH, b"three")
    assert payloads(reader2) == [b"two", b"three"]


# --- hostile or corrupt shared memory: typed errors, never a hang or an out-of-range read ---


@pytest.mark.parametrize(
    ("write", "read"),
    [(2048, 0), (16, 32), (24, 0)],
    ids=["write-beyond-read-plus-capacity", "write-behind-read", "write-unaligned"],
)
def test_reader_rejects_impossible_write_positions(region: memoryview, write: int, read: int) -> None:
    POSITION.pack_into(region, READ_POSITION_OFFSET, read)
    POSITION.pack_into(region, WRITE_POSITION_OFFSET, read)
    reader = RingReader(region[:])
    POSITION.pack_into(region, WRITE_POSITION_OFFSET, write)  # a hostile producer's store
    with pytest.raises(BrokenError, match="cursors"):
        reader.peek(4096)
    with pytest.raises(BrokenError, match="cursors"):
        RingReader(region[:])


def test_writer_rejects_a_read_position_ahead_of_it(region: memoryview) -> None:
    writer = RingWriter(region[:])
    for _ in range(16):  # exactly full, so the next write must reload the reader's cursor
        assert writer.try_write(FrameType.BATCH, bytes(48))
    POSITION.pack_into(region, READ_POSITION_OFFSET, 10**12)
    with pytest.raises(BrokenError, match="cursors"):
        writer.try_write(FrameType.BATCH, bytes(48))


@pytest.mark.parametrize(
    "length", [0, 15, 2000, 2**32 - 1], ids=["zero", "shorter-than-header", "beyond-ring", "huge"]
)
def test_reader_rejects_bad_frame_lengths(region: memoryview, length: int) -> None:
    writer, reader = ends(region)
    writer.try_write(FrameType.BATCH, bytes(100))
    FRAME_HEADER.pack_into(region, DATA_OFFSET, length, FrameType.BATCH, 0, 0)
    with pytest.raises(BrokenError, match="bad frame"):
        reader.peek(4096)


def test_reader_rejects_a_frame_longer_than_what_was_committed(region: memoryview) -> None:
    writer, reader = ends(region)
    writer.try_write(FrameType.BATCH, bytes(100))  # 128 bytes committed
    FRAME_HEADER.pack_into(region, DATA_OFFSET, 200, FrameType.BATCH, 0, 0)
    with pytest.raises(BrokenError, match="bad frame"):
        reader.peek(4096)


@pytest.mark.parametrize(
    ("field", "value"),
    [("magic", b"XXXX"), ("version", 9), ("entry_bytes", 32), ("capacity", 1000), ("capacity", 4096)],
)
def test_attach_rejects_bad_headers(region: memoryview, field: str, value: object) -> None:
    fields = dict(
        zip(("magic", "version", "entry_bytes", "capacity"), RING_HEADER.unpack_from(region), strict=True)
    )
    fields[field] = value
    RING_HEADER.pack_into(region, 0, *fields.values())
    with pytest.raises(BrokenError):
        RingReader(region[:])
    with pytest.raises(BrokenError):
        RingWriter(region[:])


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.binary(min_size=1024, max_size=1024),
    write=st.integers(0, 2**64 - 1),
    read=st.integers(0, 2048),
)
def test_garbage_gives_frames_or_broken_error_never_anything_else(
    garbage: bytes, write: int, read: int
) -> None:
    region = new_region(1024)
    region[DATA_OFFSET:] = garbage
    POSITION.pack_into(region, READ_POSITION_OFFSET, read - read % 16)
    POSITION.pack_into(region, WRITE_POSITION_OFFSET, write)
    try:
        reader = RingReader(region[:])
        for _ in range(3):
            for _, _, _, payload in reader.peek(1 << 20):
                assert len(payload) <= 1024
            reader.release()
    except BrokenError:
        pass


def test_ipc_names_from_shared_memory_are_checked() -> None:
    buf = memoryview(bytearray(64))
    put_ascii(buf, 0, 64, "/shmb-0123abcd")
    assert get_name(buf, 0, 64) == "/shmb-0123abcd"
    for bad in (b"shmb", b"/", b"/../etc/x", b"/a b"):
        buf[:] = bad.ljust(64, b"\0")
        with pytest.raises(BrokenError, match="bad IPC name"):
            get_name(buf, 0, 64)
    with pytest.raises(ValueError, match="longer"):
        put_ascii(buf, 0, 64, "/" + "x" * 63)


def test_init_ring_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="region"):
        init_ring(memoryview(bytearray(100)), 1024)
    with pytest.raises(ValueError, match="entry"):
        init_ring(memoryview(bytearray(ring_bytes(1024))), 1024, entry_bytes=24)
    capacity, write, read = attach_ring(new_region(1024), entry_bytes=0)
    assert (capacity, write, read) == (1024, 0, 0)


# --- model-based: random writes, peeks and releases against a deque ---


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 1234])
def test_random_operations_match_a_deque_model(seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([256, 1024, 4096])
    region = new_region(capacity)
    writer, reader = ends(region)
    committed: deque[bytes] = deque()  # written, not yet peeked
    peeked: list[bytes] = []  # peeked, not yet released
    for step in range(5000):
        op = rng.random()
        if op < 0.55:
            payload = rng.randbytes(rng.randint(0, writer.max_payload_bytes))
            tag = rng.getrandbits(64)
            if writer.try_write(FrameType.BATCH, payload, tag=tag, flags=step & 0xFFFF):
                committed.append(payload)
        elif op < 0.85:
            frames = reader.peek(rng.randint(1, capacity))
            assert frames or not committed, f"seed {seed} step {step}: committed frames not visible"
            for _, _, _, view in frames:
                assert bytes(view) == committed.popleft(), f"seed {seed} step {step}"
                peeked.append(bytes(view))
        else:
            reader.release()
            peeked.clear()
        stats = writer.statistics()
        assert 0 <= stats.used_bytes <= capacity
    reader.peek(1 << 30)
    reader.release()
    assert writer.unread_bytes() == 0


# --- frames built in place: try_claim / commit ---


def test_claimed_frame_is_invisible_until_commit(region: memoryview) -> None:
    writer, reader = ends(region)
    view = writer.try_claim(10)
    assert view is not None and len(view) == 10 and not view.readonly
    view[:] = b"0123456789"
    assert reader.peek(4096) == [] and reader.committed_bytes() == 0
    writer.commit(FrameType.BATCH, flags=1, tag=99)
    assert [(t, f, tag, bytes(p)) for t, f, tag, p in reader.peek(4096)] == [
        (FrameType.BATCH, 1, 99, b"0123456789")
    ]
    with pytest.raises(ValueError, match="released"):
        view[0] = 1  # the claim's view dies with the commit: no writing into a published frame


def test_claims_and_writes_interleave_like_writes(region: memoryview) -> None:
    writer, reader = ends(region)
    assert writer.try_write(FrameType.BATCH, b"first")
    claimed = writer.try_claim(3)
    assert claimed is not None
    claimed[:] = b"two"
    writer.commit(FrameType.BATCH, tag=2)
    assert writer.try_write(FrameType.BATCH, b"third")
    assert payloads(reader) == [b"first", b"two", b"third"]


def test_cancelled_claim_leaves_nothing_and_frees_its_room(region: memoryview) -> None:
    writer, reader = ends(region)
    view = writer.try_claim(writer.max_payload_bytes)
    assert view is not None
    view[:4] = b"torn"
    writer.cancel_claim()
    assert reader.committed_bytes() == 0
    with pytest.raises(ValueError, match="released"):
        view[0] = 1
    with pytest.raises(ValueError, match="without a claim"):
        writer.commit(FrameType.BATCH)
    assert writer.try_write(FrameType.BATCH, b"after")  # the cancelled claim's room is free again
    assert payloads(reader) == [b"after"]


def test_a_write_or_a_new_claim_cancels_an_open_claim(region: memoryview) -> None:
    writer, reader = ends(region)
    stale = writer.try_claim(8)
    assert stale is not None
    assert writer.try_write(FrameType.BATCH, b"written")
    with pytest.raises(ValueError, match="released"):
        stale[0] = 1
    again = writer.try_claim(8)
    assert again is not None
    newer = writer.try_claim(2)
    assert newer is not None
    newer[:] = b"ok"
    writer.commit(FrameType.BATCH)
    assert payloads(reader) == [b"written", b"ok"]


def test_claim_on_a_full_ring_returns_none_and_writes_nothing() -> None:
    region = new_region(256)
    writer, reader = ends(region)
    while writer.try_write(FrameType.BATCH, bytes(40)):
        pass
    before = bytes(region)
    assert writer.try_claim(40) is None
    assert bytes(region) == before
    reader.peek(1 << 20)
    reader.release()
    assert writer.try_claim(40) is not None


def test_claim_limits_are_caller_errors(region: memoryview) -> None:
    writer, _reader = ends(region)
    with pytest.raises(ValueError, match="at most"):
        writer.try_claim(writer.max_payload_bytes + 1)
    with pytest.raises(ValueError, match="at most"):
        writer.try_claim(-1)
    assert writer.try_claim(writer.max_payload_bytes) is not None
    assert writer.try_claim(0) is not None


def test_claim_at_the_tail_pads_so_the_frame_never_wraps() -> None:
    region = new_region(512)
    writer, reader = ends(region)
    for _ in range(3):
        assert writer.try_write(FrameType.BATCH, bytes(100))  # 3 x 128 bytes: 128 left before the end
    reader.peek(1 << 20)
    reader.release()
    view = writer.try_claim(120)  # 144 > 128: PAD the tail, the frame starts at slot 0
    assert view is not None
    view[:] = bytes(range(120))
    writer.commit(FrameType.BATCH, tag=5)
    ((frame_type, _flags, tag, payload),) = reader.peek(1 << 20)
    assert (frame_type, tag, bytes(payload)) == (FrameType.BATCH, 5, bytes(range(120)))
    assert reader.statistics().used_bytes == 128 + 144


@pytest.mark.parametrize("seed", [5, 6, 7, 99])
def test_random_claims_and_writes_match_a_deque_model(seed: int) -> None:
    """try_write, claim+commit and claim+cancel mixed at random, against a deque of committed payloads."""
    rng = random.Random(seed)
    capacity = rng.choice([256, 1024, 4096])
    writer, reader = ends(new_region(capacity))
    committed: deque[bytes] = deque()
    for step in range(5000):
        op = rng.random()
        payload = rng.randbytes(rng.randint(0, writer.max_payload_bytes))
        if op < 0.3:
            if writer.try_write(FrameType.BATCH, payload, tag=step):
                committed.append(payload)
        elif op < 0.6:
            view = writer.try_claim(len(payload))
            if view is not None:
                view[:] = payload
                if rng.random() < 0.8:
                    writer.commit(FrameType.BATCH, tag=step)
                    committed.append(payload)
                else:
                    writer.cancel_claim()
        elif op < 0.85:
            for _, _, _, view in reader.peek(rng.randint(1, capacity)):
                assert bytes(view) == committed.popleft(), f"seed {seed} step {step}"
        else:
            reader.release()
        assert 0 <= writer.statistics().used_bytes <= capacity
    assert [bytes(v) for _, _, _, v in reader.peek(1 << 30)] == list(committed)
