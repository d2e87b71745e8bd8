"""The usage ledger: one row per request, written off the request path in batches, never dropped.

Requests only put a record on a bounded asyncio queue. A background task waits flush_interval_s after the
first record, takes whatever has piled up (up to a batch) and inserts it in a worker thread: one commit and one
thread hop per interval rather than per request, which keeps the writes off the latency of the next request.

When the database cannot take a batch (down, locked, past its timeouts), or the queue is full because it is
slower than the traffic, rows are appended to a JSON-lines spill file instead: one per database, under the
state dir's logs/. For retry_interval_s after a failure, batches go straight to that file rather than each
waiting out a timeout. A second task replays the spill into the database every retry_interval_s and skips rows
already there (a commit whose acknowledgement was lost, a replay cut short), so every row ends up in the
database exactly once: with the database back, rows in the table == requests. A gateway that stops during an
outage leaves its spill file, and the next one to start on that database (any process on this machine) replays it.

If the writer task dies (cancelled, a bug), it is restarted and keeps the rows it held; the error is logged.

A row the database refuses for what it holds (a constraint, a value too long: an error no retry can fix) is
quarantined on its own, to `<spill>.rejected` with the reason in the log, and the rows around it go in: one bad
row blocks neither its batch nor any later replay. When neither the database nor the spill file takes rows (the
database away and the disk full), they go to the log as a last resort, and `/ready` and the metrics say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import make_url, select
from sqlalchemy.exc import DataError, IntegrityError

from quantserve.paths import state_dir
from quantserve.serve.config import DatabaseSettings
from quantserve.serve.db import first_line, get_engine, usage

log = logging.getLogger("quantserve.serve.ledger")

_STOP = object()
_REPLAY_CHUNK = 500  # rows per replay transaction: a failure part-way redoes at most this many lookups
# Together these tell one request's row from any other (ts has microseconds, latency_ms too); replay skips a
# spilled row whose fingerprint the table already holds.
_FINGERPRINT = ("ts", "key_id", "model", "endpoint", "status", "latency_ms", "gateway")
# What the database says about a row's content, not about itself being away: retrying the same row cannot help.
_ROW_ERRORS = (IntegrityError, DataError)


@dataclass
class UsageRecord:
    ts: float
    key_id: str | None
    model: str
    endpoint: str
    status: int
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    stream: bool = False
    gateway: str = ""


def default_spill_path(database_url: str) -> Path:
    # One file per database, so a spill is never replayed into another one; the password is left out of the
    # name so that rotating it does not orphan a spill.
    url = make_url(database_url).set(password=None).render_as_string(hide_password=False)
    return state_dir() / "logs" / f"ledger-spill-{hashlib.sha256(url.encode()).hexdigest()[:12]}.jsonl"


class SpillFile:
    """An append-only JSON-lines file that several threads and processes may append to and replay from.

    Appends take an flock on the file. A replay first renames the live file aside (under the same lock, so no
    append is torn or lost) and then works on the renamed copy under a lock of its own, which the kernel drops
    when a process dies: a copy left by a dead process is picked up by the next replay, one being replayed by
    a live process is skipped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(row) + "\n" for row in rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            with open(self.path, "a+") as out:
                fcntl.flock(out, fcntl.LOCK_EX)
                if not _is_current(out, self.path):
                    continue  # renamed for replay between open and lock: append to the new live file
                size = out.seek(0, os.SEEK_END)
                if size and (out.seek(size - 1), out.read(1))[1] != "\n":
                    # a line torn by a crash mid-append: end it, so it alone is rejected at replay, not the
                    # first row of this batch with it
                    data = "\n" + data
                # flushed to the kernel on close: survives a gateway crash; a machine crash may lose the tail
                out.write(data)
                out.flush()
                return

    def pending(self) -> bool:
        return self.path.exists() or any(self._claimed())

    def claim(self) -> Path | None:
        """Rename the live file aside for replay; None when there is none."""
        try:
            with open(self.path) as live:  # not "a": that would create an empty live file
                fcntl.flock(live, fcntl.LOCK_EX)
                if not _is_current(live, self.path) or os.fstat(live.fileno()).st_size == 0:
                    return None
                claimed = self.path.with_name(f"{self.path.name}.{os.getpid()}-{time.time_ns()}.replay")
                os.rename(self.path, claimed)
                return claimed
        except FileNotFoundError:
            return None

    def claimed(self) -> list[Path]:
        return sorted(self._claimed())

    def _claimed(self) -> Iterator[Path]:
        return self.path.parent.glob(f"{self.path.name}.*.replay") if self.path.parent.is_dir() else iter(())

    @contextlib.contextmanager
    def locked(self, claimed: Path) -> Iterator[IO[str] | None]:
        """The claimed file open and locked, or None when another replay has it or has finished it."""
        with contextlib.ExitStack() as stack:
            try:
                handle = stack.enter_context(open(claimed))
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (FileNotFoundError, BlockingIOError):
                yield None
                return
            yield handle if _is_current(handle, claimed) else None


def _is_current(handle: IO[str], path: Path) -> bool:
    """Whether `path` still names the file `handle` has open (not renamed or removed since)."""
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class Ledger:
    def __init__(
        self,
        database_url: str,
        batch_size: int = 200,
        flush_interval_s: float = 0.25,
        fallback_path: Path | None = None,
        *,
        max_queue: int = 10_000,
        retry_interval_s: float = 5.0,
        database: DatabaseSettings | None = None,
    ) -> None:
        self.engine = get_engine(database_url, database)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_interval_s = retry_interval_s
        self.spill = SpillFile(fallback_path or default_spill_path(database_url))
        self.fallback_path = self.spill.path
        self.written = 0  # rows inserted by the writer
        self.spilled = 0  # rows appended to the spill file
        self.replayed = 0  # spilled rows inserted by a replay
        self.restarts = 0  # times the writer task died and was started again
        self.quarantined = 0  # rows the database refused for their content, moved to the rejected file
        self.lost = 0  # rows neither the database nor the spill file took (written to the log)
        self.spill_error: str | None = None  # the last failure to append to the spill file, until one succeeds
        self.database_error: str | None = None  # the last failed write or replay, until one succeeds
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_queue)
        self._held: list[UsageRecord] = []  # taken off the queue by the writer, not yet handed to a write
        self._db_down_until = 0.0  # monotonic; before it, rows go straight to the spill file
        self._last_warning = 0.0
        self._task: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._stop_replay = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        self._spawn_writer()
        self._replayer = asyncio.create_task(self._replay_loop(), name="ledger-replay")

    def record(self, record: UsageRecord) -> None:
        if self._closed or self._task is None:
            self.write_batch([record])  # late arrival during shutdown: slower, still kept
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._spill([asdict(record)], f"the write queue is full ({self._queue.maxsize} rows)")

    async def close(self) -> None:
        """Write everything queued so far, replay what was spilled if the database answers, then stop. Called
        from the app's shutdown."""
        if self._task is None:
            return
        self._closed = True
        if self._replayer is not None:
            self._stop_replay.set()
            await asyncio.wait([self._replayer])  # lets a replay in progress finish its transaction
        if not self._task.done():
            # put() may wait for room while the writer drains the queue; should the writer die meanwhile,
            # it would wait for ever, hence a task of its own
            stop = asyncio.ensure_future(self._queue.put(_STOP))
            await asyncio.wait([self._task])
            stop.cancel()
        # a writer that died during shutdown is not restarted: what it held and left queued is written here
        leftover = self._drain()
        if leftover:
            await asyncio.to_thread(self.write_batch, leftover)
        if self.spill.pending():
            await asyncio.to_thread(self._try_replay)
        self._task = None

    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    def _drain(self) -> list[UsageRecord]:
        rows, self._held = self._held, []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _STOP:
                rows.append(item)  # type: ignore[arg-type]
        return rows

    def _spawn_writer(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")
        self._task.add_done_callback(self._writer_exited)

    def _writer_exited(self, task: asyncio.Task[None]) -> None:
        if self._closed or task is not self._task:
            return
        replayer = self._replayer
        if task.cancelled() and replayer is not None and (replayer.done() or replayer.cancelling()):
            # Both tasks cancelled at once: the event loop is shutting down without close() (asyncio.run's
            # end). A restarted writer would never run; the rows are written here instead.
            self._closed = True
            rows = self._drain()
            if rows:
                self.write_batch(rows)
            return
        why = "cancelled" if task.cancelled() else repr(task.exception())
        self.restarts += 1
        log.error("ledger writer task died (%s); restarting it with its %d queued rows", why, self.pending())
        self._spawn_writer()

    async def _run(self) -> None:
        while True:
            if not self._held:  # rows a dead predecessor held are written first
                item = await self._queue.get()
                if item is _STOP:
                    return
                self._held.append(item)  # type: ignore[arg-type]
                if self.flush_interval_s > 0 and self._queue.qsize() < self.batch_size:
                    await asyncio.sleep(self.flush_interval_s)
            stop = False
            while len(self._held) < self.batch_size and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:  # the last thing ever queued
                    stop = True
                    break
                self._held.append(item)  # type: ignore[arg-type]
            # The worker thread owns the batch from here: a cancelled to_thread still finishes its write.
            batch, self._held = self._held, []
            try:
                await asyncio.to_thread(self.write_batch, batch)
            except Exception as err:  # not from write_batch, which never raises: no worker thread was had
                log.warning("ledger: no worker thread (%s); writing %d rows from the event loop", err, len(batch))
                self.write_batch(batch)
            if stop:
                return

    def write_batch(self, batch: list[UsageRecord]) -> None:
        """Insert the rows, or append them to the spill file if the database does not take them. Never raises."""
        rows = [asdict(r) for r in batch]
        if time.monotonic() < self._db_down_until:
            self._spill(rows, "the database failed moments ago")
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(usage.insert(), rows)
        except _ROW_ERRORS:
            self._insert_one_by_one(rows)
            return
        except Exception as err:  # any driver error: the rows go to the spill file, not away
            # No retry here: a failed commit may still have landed, and only the replay checks for that.
            # (A connection the server had closed is replaced before use by pool_pre_ping.)
            self._db_down_until = time.monotonic() + self.retry_interval_s
            self.database_error = first_line(err)
            self._spill(rows, f"the database write failed: {first_line(err)}")
            return
        self.written += len(rows)
        self._db_down_until = 0.0
        self.database_error = None

    def _insert_one_by_one(self, rows: list[dict[str, Any]]) -> int:
        """A batch the database refused for a row's content: each row alone, the bad ones quarantined. Returns
        the rows inserted; a database that goes away meanwhile raises (the caller spills or retries)."""
        inserted = 0
        for row in rows:
            try:
                with self.engine.begin() as conn:
                    conn.execute(usage.insert(), [row])
            except _ROW_ERRORS as err:
                self._quarantine([row], first_line(err))
                continue
            inserted += 1
        self.written += inserted
        self._db_down_until = 0.0
        self.database_error = None
        return inserted

    @property
    def rejected_path(self) -> Path:
        return self.spill.path.with_name(f"{self.spill.path.name}.rejected")

    def _quarantine(self, rows: list[dict[str, Any]], why: str) -> None:
        self.quarantined += len(rows)
        try:
            self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.rejected_path, "a") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
        except OSError as err:
            log.error("ledger: %d rows refused by the database (%s) and not storable (%s): %s", len(rows), why,
                      err, json.dumps(rows))
            return
        log.error("ledger: the database refused %d rows for their content (%s); moved to %s", len(rows), why,
                  self.rejected_path)

    def health(self) -> dict[str, Any]:
        """What /ready and the metrics say about the ledger: `storing` is false while rows are being lost."""
        return {"storing": self.spill_error is None or self.database_error is None,
                "database_error": self.database_error, "spill_error": self.spill_error,
                "spilled": self.spilled, "replayed": self.replayed, "quarantined": self.quarantined,
                "lost": self.lost, "queued": self.pending()}

    def _spill(self, rows: list[dict[str, Any]], why: str) -> None:
        try:
            self.spill.append(rows)
        except OSError as err:
            # Neither the database nor the disk takes them: the log is the last place left.
            self.lost += len(rows)
            self.spill_error = f"{self.spill.path}: {err}"
            log.error("ledger: %d rows could not be stored (%s; spill file %s: %s); they follow: %s",
                      len(rows), why, self.spill.path, err, json.dumps(rows))
            return
        self.spill_error = None
        self.spilled += len(rows)
        now = time.monotonic()
        if now - self._last_warning >= self.retry_interval_s:  # one line per interval, not per row
            self._last_warning = now
            log.warning("ledger: %s; rows go to %s (%d so far) and are replayed into the database when it "
                        "answers again", why, self.spill.path, self.spilled)

    async def _replay_loop(self) -> None:
        while not self._stop_replay.is_set():
            if self.spill.pending():  # at start-up too: a spill left by an earlier gateway is loaded at once
                await asyncio.to_thread(self._try_replay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_replay.wait(), self.retry_interval_s)

    def _try_replay(self) -> None:
        try:
            count = self.replay()
        except Exception as err:  # the database is still away; the spill stays for the next round
            self._db_down_until = time.monotonic() + self.retry_interval_s
            self.database_error = first_line(err)
            log.warning("ledger: replay of %s failed, will retry in %g s: %s", self.spill.path,
                        self.retry_interval_s, first_line(err))
            return
        if count:
            log.info("ledger: replayed %d spilled rows from %s into the database", count, self.spill.path)

    def replay(self) -> int:
        """Insert spilled rows the database does not have yet; returns how many. Raises when it cannot."""
        count = 0
        # Copies claimed earlier (a failed round, a dead process) before the live file: during an outage each
        # process keeps at most one claimed copy instead of one per round.
        for claimed in self.spill.claimed():
            count += self._replay_file(claimed)
        claimed = self.spill.claim()
        if claimed is not None:
            count += self._replay_file(claimed)
        return count

    def _replay_file(self, claimed: Path) -> int:
        inserted = 0
        with self.spill.locked(claimed) as handle:
            if handle is None:
                return 0
            rejected: list[str] = []
            chunk: list[dict[str, Any]] = []
            for line in handle:
                try:
                    chunk.append(_usage_row(json.loads(line)))
                except (ValueError, TypeError, KeyError):
                    rejected.append(line.rstrip("\n"))  # e.g. a line cut short by a crash mid-append
                if len(chunk) >= _REPLAY_CHUNK:
                    inserted += self._insert_missing(chunk)
                    chunk = []
            if chunk:
                inserted += self._insert_missing(chunk)
            if rejected:
                bad = self.rejected_path
                with open(bad, "a") as out:
                    out.writelines(line + "\n" for line in rejected)
                log.error("ledger: %d unreadable lines in %s moved to %s", len(rejected), claimed, bad)
            claimed.unlink()  # still under the lock: no other replay reads it again
        return inserted

    def _insert_missing(self, rows: list[dict[str, Any]]) -> int:
        columns = [usage.c[name] for name in _FINGERPRINT]
        ts = [row["ts"] for row in rows]
        missing: list[dict[str, Any]] = []
        try:
            with self.engine.begin() as conn:
                present = set(conn.execute(
                    select(*columns).where(usage.c.ts.between(min(ts), max(ts)),
                                           usage.c.gateway.in_({row["gateway"] for row in rows}))
                ).tuples())
                missing = [row for row in rows if tuple(row[name] for name in _FINGERPRINT) not in present]
                if missing:
                    conn.execute(usage.insert(), missing)
        except _ROW_ERRORS:  # one row's content: the others go in, it is quarantined (the whole insert rolled back)
            inserted = self._insert_one_by_one(missing)
            self.written -= inserted  # counted as replayed, below
            self.replayed += inserted
            return inserted
        self._db_down_until = 0.0  # it answered: the writer goes back to the database
        self.database_error = None
        self.replayed += len(missing)
        return len(missing)


def _usage_row(data: dict[str, Any]) -> dict[str, Any]:
    # Through UsageRecord: a line with a missing or unknown field is rejected, not half-inserted.
    return asdict(UsageRecord(**data))
