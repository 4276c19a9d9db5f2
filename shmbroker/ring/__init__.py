"""Shared-memory lanes between local producers and partition workers, and the partition control block.

    layout.py      ring region header and frame format (drawn there)
    ring.py        SPSC byte ring of frames: RingWriter / RingReader
    completion.py  fixed-entry completion queue, worker -> producer
    block.py       POSIX shm blocks: create (and unlink) / attach / close
    doorbell.py    semaphore doorbell + sleeping-flag protocol
    lane.py        one producer <-> one partition worker: create_lane, LaneProducer, LaneWorker
    control.py     per-partition control block (seqlock): ControlWriter, ControlReader

docs/ownership.md says who creates, writes, reads and unlinks each block, cursor and semaphore.
"""
