"""The partition worker process: one per topic-partition, the only writer of its log.

It drains the shared-memory lanes of its partition (one per local producer, plus the router's),
checks every batch (size, magic, CRC, producer id), stamps offsets, appends everything it drained
with one vectored write, and posts each batch's base offset or a Kafka error code back into the
lane's completion queue. It publishes log start, log end and high watermark in the partition's
control block, where local consumers read them without asking.

The batches are written to the log straight from shared memory (no private copy) and what the page
cache then holds is checked (``Log.append_shared``): a producer that scribbles on a frame after
committing it cannot slip bytes past the checks (check-then-use on memory someone else can write),
because the stored batch must carry the header the worker checked and a CRC matching its stored
bytes, or it is cut before anyone can read it or hear it acked. With no follower in sync the high
watermark is the log end: os.write puts a batch in the page cache, which survives the death of any
process (acks=1). acks=all with the leader as the only in-sync replica fsyncs before it completes
(DESIGN invariant 1).

Replication (workers/replicator.py) reaches the worker only through the in-sync cells of the
control block: followers in sync and their smallest log end. The high watermark is the smallest
log end over the in-sync set, never moving back. An acks=all batch is refused before its append
(NOT_ENOUGH_REPLICAS) while the in-sync set is below ``min.insync.replicas``; once appended, its
completion waits in ``_Lane.held`` until the high watermark covers it (Kafka's produce purgatory),
and fails with NOT_ENOUGH_REPLICAS_AFTER_APPEND if the set shrank below the minimum meanwhile.
Batches are stamped with the broker's leader epoch (``WorkerSpec.leader_epoch``).

Commands from the supervisor come over a pipe: ("attach", lane_name, producer_id, pid),
("detach", lane_name), ("stop",). The supervisor rings the doorbell after each, so a sleeping
worker wakes at once.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import time
from collections import OrderedDict, deque
from multiprocessing.connection import Connection

from shmbroker import records
from shmbroker.disk.log import AppendInfo, Log
from shmbroker.errors import (
    BrokerError,
    CorruptRecordError,
    InvalidRecordError,
    KafkaStorageError,
    NotEnoughReplicasAfterAppendError,
    NotEnoughReplicasError,
    RecordTooLargeError,
)
from shmbroker.ring.completion import Completion
from shmbroker.ring.control import ControlWriter, ErrorKind, WorkerState
from shmbroker.ring.lane import LaneWorker
from shmbroker.workers.specs import WorkerSpec

log = logging.getLogger(__name__)

ACKS_ALL = -1
DRAIN_BYTES = 16 << 20  # per lane per turn: bounds one turn's latency
DEDUP_WINDOW = 4096  # recent (producer_id, sequence) pairs remembered for a worker restart
SPIN_TURNS = 2  # empty turns before sleeping when shm.worker.spin.us is 0
SLEEP_S = 0.002  # longest sleep while busy: bounds the cost of a lost wakeup (ring/doorbell.py explains)
IDLE_SLEEP_S = 0.05  # longest sleep once idle for IDLE_AFTER_S: 16 idle workers then cost ~0 CPU
IDLE_AFTER_S = 0.2
MAINTENANCE_INTERVAL_S = 0.1
_NEW = tuple.__new__  # a NamedTuple from its fields in order: Completion(...) costs ~1 us a batch here
# While busy the worker looks for supervisor commands this often, not every turn: a poll() is ~1 us
# of a ~25-us turn, and an attach or stop can wait a millisecond. Asleep, the doorbell brings them.
COMMAND_POLL_S = 0.001


def _error_kind(exc: BrokerError) -> ErrorKind:
    if isinstance(exc, CorruptRecordError):
        return ErrorKind.CORRUPT
    if isinstance(exc, RecordTooLargeError):
        return ErrorKind.TOO_LARGE
    if isinstance(exc, KafkaStorageError):
        return ErrorKind.STORAGE
    return ErrorKind.OTHER


class _Lane:
    """One attached lane and what the worker knows of its producer.

    A ``trusted`` lane is the router's: it carries remote clients' batches, whose producer ids and
    sequences are theirs, so only the batch checks apply to it. Its batches with a producer id >= 0
    come from idempotent remote producers (net/protocol.py, revision 2) and are deduplicated by the
    (producer_id, base_sequence) they carry; those with -1 are appended as they come.
    """

    def __init__(self, name: str, producer_id: int, pid: int, trusted: bool) -> None:
        self.name, self.producer_id, self.pid, self.trusted = name, producer_id, pid, trusted
        # The router waits in poll() beside its sockets: its lanes ring a socket it polls (one wakeup).
        self.worker = LaneWorker.attach(name, wake_socket=trusted)
        # Completions waiting for the high watermark (acks=all), with the offset it must reach;
        # later completions of this lane queue behind them so the producer sees them in order.
        self.held: deque[tuple[int, bool, Completion]] = deque()

    def close(self) -> None:
        self.worker.close()


def tail_producer_batches(log: Log, limit: int) -> list[tuple[int, int, int]]:
    """(base_offset, producer_id, base_sequence) of the log's last batches, oldest first.

    Reads the last two segments' batch headers (a roll may have come just before the crash), so
    a restarted worker knows which frames still in its lanes were appended already.
    """
    found: list[tuple[int, int, int]] = []
    for _base, path in log.segments[-2:]:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < records.HEADER_BYTES:
                continue
            with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mapped:
                view = memoryview(mapped)
                try:
                    for _position, header in records.iter_batches(view):
                        if header.producer_id >= 0:
                            found.append((header.base_offset, header.producer_id, header.base_sequence))
                except BrokerError:
                    pass  # a preallocated zero tail ends the scan
                finally:
                    view.release()
    return found[-limit:]


class PartitionWorker:
    """The worker's state and one turn of work; ``run`` below drives it."""

    def __init__(self, spec: WorkerSpec, control: ControlWriter) -> None:
        self.spec = spec
        self.control = control
        self.log = Log.open(spec.directory, spec.log_config)
        self.lanes: dict[str, _Lane] = {}
        self.local_handled = False  # the last turn took batches from a local producer's lane
        # (producer_id, base_sequence) -> base_offset of batches already appended: a worker that
        # died between its append and releasing the lane re-reads those frames after a restart.
        self.recent: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._remember_tail()
        self.isr = control.isr_cells()
        self._isr_pair = self.isr.read()  # (followers, min_leo) as last read
        self.isr_followers = 0
        # A successor (worker restart) starts from its predecessor's high watermark, which the control
        # block keeps, not from its log end: records above it may be on this host only, and a consumer
        # that read them could see them vanish after a failover. A fresh block holds 0; alone, the
        # first publish moves it to the log end.
        self.high_watermark = min(self.log.log_end_offset, control.current.high_watermark)
        self.publish()

    def _remember_tail(self) -> None:
        for base_offset, producer_id, base_sequence in tail_producer_batches(self.log, DEDUP_WINDOW):
            self._remember(producer_id, base_sequence, base_offset)

    def _remember(self, producer_id: int, base_sequence: int, base_offset: int) -> None:
        self.recent[(producer_id, base_sequence)] = base_offset
        if len(self.recent) > DEDUP_WINDOW:
            self.recent.popitem(last=False)

    def publish(self) -> None:
        self._compute_high_watermark()
        self.control.publish(
            self.control.current._replace(
                log_start_offset=self.log.log_start_offset,
                log_end_offset=self.log.log_end_offset,
                high_watermark=self.high_watermark,
                leader_epoch=self.spec.leader_epoch,
            )
        )

    def _compute_high_watermark(self) -> int:
        """The smallest log end over the in-sync set (the log end when the leader stands alone)."""
        if self.isr.changed():  # else the pair read last is still the pair (one load, not a seqlock read)
            self._isr_pair = self.isr.read()
        followers, min_leo = self._isr_pair
        self.isr_followers = followers
        end = self.log.log_end_offset
        hw = end if followers == 0 else min(end, min_leo)
        # Never back: a follower joins only at or above the high watermark, and a stale pair of
        # cells read mid-change must not hide records consumers were already given.
        self.high_watermark = max(min(hw, end), min(self.high_watermark, end))
        return self.high_watermark

    def on_isr_change(self) -> None:
        """The replicator moved the cells: a new high watermark, and held completions may go."""
        before = self.high_watermark
        self._compute_high_watermark()
        if self.high_watermark != before:
            self.control.publish(self.control.current._replace(high_watermark=self.high_watermark))
        self.release_held()

    def release_held(self) -> None:
        """Complete held acks=all batches the high watermark now covers (fsync first when the
        leader stands alone: then the leader's disk is the only copy)."""
        if not any(lane.held for lane in self.lanes.values()):
            return
        if self.isr_followers == 0:
            self.log.flush()
        below_minimum = 1 + self.isr_followers < self.spec.log_config.min_insync_replicas
        for lane in list(self.lanes.values()):
            ready: list[Completion] = []
            while lane.held and lane.held[0][0] <= self.high_watermark:
                _need, acks_all, completion = lane.held.popleft()
                if acks_all and below_minimum and completion.error_code == 0:
                    self.control.count_error(ErrorKind.OTHER)
                    completion = completion._replace(error_code=NotEnoughReplicasAfterAppendError.kafka_code)
                ready.append(completion)
            if ready:
                lane.worker.complete_many(ready)

    def attach(self, name: str, producer_id: int, pid: int, trusted: bool) -> None:
        if name in self.lanes:
            return
        try:
            self.lanes[name] = _Lane(name, producer_id, pid, trusted)
        except Exception as exc:  # a lane its producer broke before we looked, or one already gone
            log.warning("lane %s of pid %d not attached: %r", name, pid, exc)
            self.control.count_error(ErrorKind.OTHER)

    def has_requests(self) -> bool:
        for lane in self.lanes.values():
            try:
                if lane.worker.has_requests():
                    return True
            except Exception:
                return True  # let turn() meet the error and drop the lane
        return False

    def detach(self, name: str) -> None:
        lane = self.lanes.pop(name, None)
        if lane is not None:
            self.turn_lane(lane)  # whatever was committed before the close is still appended
            lane.close()  # held completions die with it: their producer is gone

    def turn(self) -> int:
        """Drain every lane once; return how many batches were handled. ``local_handled`` says whether
        some came from a local producer's lane (not the router's)."""
        handled = 0
        self.local_handled = False
        for lane in list(self.lanes.values()):
            try:
                n = self.turn_lane(lane)
                if n and not lane.trusted:
                    self.local_handled = True
                handled += n
            except KafkaStorageError:
                raise  # the disk, not the lane: let the supervisor restart us
            except Exception as exc:  # a hostile or broken lane (or a bug): drop that lane, keep serving
                # Re-reading the same frames after a restart would only crash again.
                log.warning("lane %s of pid %d dropped: %r", lane.name, lane.pid, exc)
                self.control.count_error(ErrorKind.OTHER)
                self.lanes.pop(lane.name, None)
                lane.close()
        return handled

    def turn_lane(self, lane: _Lane) -> int:
        requests = lane.worker.drain(DRAIN_BYTES)
        if not requests:
            return 0
        jobs = [(sequence, acks) for sequence, acks, _batch in requests]
        views = [batch for _sequence, _acks, batch in requests]
        del requests
        self._append(lane, jobs, views)
        # Release only now: a worker killed before this line leaves the frames in the lane, and its
        # successor answers the ones already appended from ``recent`` instead of losing their acks.
        lane.worker.release()
        return len(jobs)

    def _check_owner(self, lane: _Lane, view: memoryview, sequence: int) -> records.BatchHeader:
        """The lane-level checks (the log checks length, magic and CRC): whose batch, which sequence."""
        header = records.parse_batch_header(view)
        if lane.trusted:
            return header
        if header.producer_id != lane.producer_id:
            raise InvalidRecordError(
                f"batch says producer id {header.producer_id}; this lane belongs to {lane.producer_id}"
            )
        if header.base_sequence != sequence & 0x7FFFFFFF:
            raise CorruptRecordError(f"batch sequence {header.base_sequence}; the lane frame says {sequence}")
        return header

    @staticmethod
    def _dedup_key(lane: _Lane, header: records.BatchHeader) -> tuple[int, int] | None:
        """Whose repeat this batch could be: local lanes always, the router's only for idempotent ids."""
        if lane.trusted and header.producer_id < 0:
            return None
        return (header.producer_id, header.base_sequence)

    def _append(self, lane: _Lane, jobs: list[tuple[int, int]], views: list[memoryview]) -> None:
        """Check, append and answer one drain of a lane."""
        if lane.held or not self._append_plain(lane, jobs, views):
            self._append_general(lane, jobs, views)

    def _append_plain(self, lane: _Lane, jobs: list[tuple[int, int]], views: list[memoryview]) -> bool:
        """The common drain in one pass: acks 0 or 1, every batch its lane's own and new. False, having
        done nothing, when a batch needs more (acks=all, a failed lane check, a repeat): then
        ``_append_general`` takes the whole drain. Same outcome as that path with fewer Python calls
        and no bookkeeping dicts, which showed at one batch a turn (a latency run): with the other
        cuts of that change a one-batch turn went from ~29 to ~19.5 us (in-process probe, p10).
        """
        headers: list[records.BatchHeader] = []
        keys: list[tuple[int, int] | None] = []
        recent, trusted, owner = self.recent, lane.trusted, lane.producer_id
        parse = records.parse_batch_header
        for (sequence, acks), view in zip(jobs, views, strict=True):
            if acks == ACKS_ALL:
                return False
            try:
                header = parse(view)
            except BrokerError:
                return False
            producer_id = header.producer_id
            if trusted:  # the router's lane: only idempotent remote batches are deduplicated
                key = None if producer_id < 0 else (producer_id, header.base_sequence)
            elif producer_id != owner or header.base_sequence != sequence & 0x7FFFFFFF:
                return False
            else:
                key = (producer_id, header.base_sequence)
            if key is not None and key in recent:
                return False
            headers.append(header)
            keys.append(key)
        if len(keys) > 1:
            keyed = [key for key in keys if key is not None]
            if len(set(keyed)) < len(keyed):
                return False  # a retry drained beside its original
        infos, error = self.log.append_shared(
            views, headers, leader_epoch=self.spec.leader_epoch, now_ms=int(time.time() * 1000)
        )
        answers: list[Completion] = []
        n_records = n_bytes = 0
        for i, info in enumerate(infos):
            # Completion(sequence, base_offset, log_append_time_ms, records_count, 0), built directly
            sequence, acks = jobs[i]
            if acks:
                answers.append(_NEW(Completion, (sequence, info[0], info[3], info[4], 0)))
            n_records += info[4]
            n_bytes += len(views[i])
            key = keys[i]
            if key is not None:  # self._remember, inline
                recent[key] = info[0]
                if len(recent) > DEDUP_WINDOW:
                    recent.popitem(last=False)
        if infos:
            self.control.record_append(
                log_end_offset=self.log.log_end_offset,
                high_watermark=self._compute_high_watermark(),
                batches=len(infos),
                records=n_records,
                n_bytes=n_bytes,
            )
        if error is not None:  # the batch after the appended prefix was refused, as _append_general does
            bad = len(infos)
            self.control.count_error(_error_kind(error))
            if jobs[bad][1]:
                answers.append(_NEW(Completion, (jobs[bad][0], -1, -1, 0, error.kafka_code)))
        if answers:
            lane.worker.complete_many(answers)
        if error is not None and len(infos) + 1 < len(jobs):  # the batches after it: a drain of their own
            rest = len(infos) + 1
            self._append(lane, jobs[rest:], views[rest:])
        return True

    def _append_general(self, lane: _Lane, jobs: list[tuple[int, int]], views: list[memoryview]) -> None:
        now_ms = int(time.time() * 1000)
        done: list[Completion | None] = [None] * len(jobs)
        todo: list[int] = []
        acks_all = False
        for _sequence, acks in jobs:  # a loop: any() over a generator costs ~1 us a turn here
            if acks == ACKS_ALL:
                acks_all = True
                break
        if acks_all:  # acks=1 needs no fresh in-sync count
            self._compute_high_watermark()
        in_sync = 1 + self.isr_followers
        min_insync = self.spec.log_config.min_insync_replicas
        keys: dict[int, tuple[int, int]] = {}  # todo index -> dedup key, remembered once appended
        first: dict[tuple[int, int], int] = {}  # dedup key -> index of its first copy in this turn
        repeats: list[tuple[int, int]] = []  # (index, index of the first copy): a retry that caught up
        needs: dict[int, int] = {}  # job index -> high watermark its acks=all completion waits for
        headers: dict[int, records.BatchHeader] = {}  # todo index -> the header its checks read
        for i, ((sequence, acks), view) in enumerate(zip(jobs, views, strict=True)):
            try:
                header = self._check_owner(lane, view, sequence)
                if acks == ACKS_ALL and in_sync < min_insync:
                    raise NotEnoughReplicasError(
                        f"{in_sync} in-sync replicas; min.insync.replicas={min_insync}"
                    )
            except BrokerError as exc:
                self.control.count_error(_error_kind(exc))
                done[i] = Completion(sequence, -1, -1, 0, exc.kafka_code)
                continue
            key = self._dedup_key(lane, header)
            known = None if key is None else self.recent.get(key)
            if known is not None:  # appended before (a worker crash, a client's retry): same answer
                done[i] = Completion(sequence, known, -1, header.records_count, 0)
                if acks == ACKS_ALL and known + header.records_count > self.high_watermark:
                    needs[i] = known + header.records_count  # acked only once replicated, as the first
                continue
            if key is not None and key in first:  # a remote retry drained with its original
                repeats.append((i, first[key]))
                continue
            if key is not None:
                first[key] = i
                keys[i] = key
            headers[i] = header
            todo.append(i)
        appended = 0
        if todo:
            pairs: list[tuple[int, AppendInfo]] = []
            rest = todo
            while rest:  # each round appends a prefix and refuses the batch after it, if any
                infos, error = self.log.append_shared(
                    [views[i] for i in rest],
                    [headers[i] for i in rest],
                    leader_epoch=self.spec.leader_epoch,
                    now_ms=now_ms,
                )
                pairs += zip(rest, infos, strict=False)
                if error is None:
                    break
                bad = rest[len(infos)]
                self.control.count_error(_error_kind(error))
                done[bad] = Completion(jobs[bad][0], -1, -1, 0, error.kafka_code)
                rest = rest[len(infos) + 1 :]
            recent, n_records, n_bytes = self.recent, 0, 0
            for i, info in pairs:
                # Completion(sequence, base_offset, log_append_time_ms, records_count, 0), built directly
                done[i] = _NEW(Completion, (jobs[i][0], info[0], info[3], info[4], 0))
                n_records += info[4]
                n_bytes += len(views[i])
                key = keys.get(i)
                if key is not None:  # self._remember, inline (once per batch)
                    recent[key] = info[0]
                    if len(recent) > DEDUP_WINDOW:
                        recent.popitem(last=False)
            if pairs:
                if acks_all and self.isr_followers == 0 and any(jobs[i][1] == ACKS_ALL for i, _info in pairs):
                    self.log.flush()  # the leader is the whole in-sync set: acks=all means on disk
                appended = len(pairs)
                end = self.log.log_end_offset
                self.control.record_append(
                    log_end_offset=end,
                    high_watermark=self._compute_high_watermark(),
                    batches=appended,
                    records=n_records,
                    n_bytes=n_bytes,
                )
                if acks_all:
                    for i, info in pairs:
                        if jobs[i][1] == ACKS_ALL and info.last_offset >= self.high_watermark:
                            needs[i] = info.last_offset + 1
        for i, original in repeats:  # the first copy's outcome, appended or refused
            answer = done[original]
            assert answer is not None  # every todo index got a completion above
            done[i] = answer._replace(sequence=jobs[i][0])
            if original in needs:
                needs[i] = needs[original]
        answers: list[Completion] = []
        held = lane.held
        for i, (completion, (_s, acks)) in enumerate(zip(done, jobs, strict=True)):
            if completion is None or acks == 0:
                continue
            if held or (needs and needs.get(i)):
                held.append((needs.get(i, 0), acks == ACKS_ALL, completion))
            else:
                answers.append(completion)
        if answers:
            lane.worker.complete_many(answers)

    def maintenance(self, now_ms: int) -> None:
        self.log.maybe_flush(now_ms)
        if self.log.apply_retention(now_ms):
            self.control.bump_segment_generation(log_start_offset=self.log.log_start_offset)
            self.publish()

    def close(self) -> None:
        for name in list(self.lanes):
            self.detach(name)
        self.isr.close()
        self.log.close(clean=True)


def run(spec: WorkerSpec, commands: Connection) -> None:
    """The worker process's body: blocking loop until the supervisor says stop (or the pipe dies)."""
    if spec.cpu is not None:
        try:
            import psutil

            psutil.Process().cpu_affinity([spec.cpu])
        except (OSError, AttributeError):
            pass
    control = ControlWriter.attach(spec.control_name)
    worker = PartitionWorker(spec, control)
    control.set_state(WorkerState.READY)
    idle_turns = 0
    idle_since = time.monotonic()
    next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
    now = next_command_poll = 0.0  # the first turn looks for commands
    spin_s = 0.0  # how long to keep looking after the last batch (spec.spin_s after a local one)
    isr = worker.isr
    # One poll object for the command pipe: Connection.poll(0) builds a selector per call (~14 us,
    # measured), and the loop asks once per turn and once more before each sleep.
    command_poll = select.poll()
    command_poll.register(commands.fileno(), select.POLLIN)

    def has_command() -> bool:
        return bool(command_poll.poll(0))

    def ready() -> bool:
        return worker.has_requests() or has_command() or isr.changed()

    try:
        while True:
            while now >= next_command_poll and has_command():
                command = commands.recv()
                if command[0] == "stop":
                    return
                if command[0] == "attach":
                    worker.attach(command[1], command[2], command[3], command[4])
                elif command[0] == "detach":
                    worker.detach(command[1])
            if now >= next_command_poll:
                next_command_poll = now + COMMAND_POLL_S
            moved = isr.changed()
            if moved:
                worker.on_isr_change()
            handled = worker.turn()
            if handled or moved:
                # Local consumers and the router sleep on the control block's event counter: the
                # high watermark and this turn's completions are out, so wake them now.
                control.wake_readers()
            if handled:
                idle_turns = 0
                # Spin only after a local producer's batch: the router rings when it has work, and
                # spinning for it too changed no remote figure (perf.run A/B, 4 runs each) but CPU.
                spin_s = spec.spin_s if worker.local_handled else 0.0
            else:
                if idle_turns == 0:
                    idle_since = time.monotonic()
                idle_turns += 1
                idle_s = time.monotonic() - idle_since
                if idle_turns > SPIN_TURNS and idle_s >= spin_s:
                    # Announce the sleep, look once more, sleep (ring/doorbell.py): a producer rings us.
                    long_idle = idle_s > IDLE_AFTER_S
                    control.wake_flag.sleep(ready, IDLE_SLEEP_S if long_idle else SLEEP_S, spin_s=0.0)
                    next_command_poll = 0.0  # a command may be what woke us
                elif spin_s:
                    # Spinning for the producer's next batch (a sleep and its wake-up cost 30-80 us on
                    # a VM, more than a turn), but a runnable client on this core goes first.
                    os.sched_yield()
            now = time.monotonic()
            if now >= next_maintenance:
                worker.maintenance(int(time.time() * 1000))
                next_maintenance = now + MAINTENANCE_INTERVAL_S
    except EOFError:
        pass  # the supervisor is gone: stop cleanly, as if told to
    finally:
        control.set_state(WorkerState.STOPPING)
        worker.close()
        control.close()
