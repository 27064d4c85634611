"""One harvest writes at a time.

A batch merges its records into the stored state it has just read, and the pipelined writer
carries that state from one batch to the next. A second run writing the same hosts in between
would be overwritten or collide on the unique address; the same run resumed twice at once (the
command line and the admin's resume) would read and count its lines twice. So a run holds a lock
for as long as it writes. The database (PostgreSQL: a session advisory lock) or the operating
system (SQLite: a lock on a file beside the database) releases it when the process ends, however
it ends: a run killed with SIGKILL never leaves it behind.

A process also marks each run it is running, from before it waits for the harvest lock until it
is done with the run (run_owned). A run marked "running" in the database that no process runs
(its process was killed, or its worker or machine died) is then told apart from one that waits
for the lock: `unowned` says so, and keeps any process from taking the run up meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import DatabaseError, connection
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg.pq import TransactionStatus

# pg_advisory_lock(key1, key2): a namespace of our own, and the harvest lock within it. The run
# that holds it also holds (PG_RUN_NAMESPACE, run id), so others can tell which run is writing.
PG_LOCK_KEY = (0x6D656478, 1)  # "medx"
PG_RUN_NAMESPACE = 0x6D656479
# Held shared by each batch transaction of the writer thread, on its own connection, until that
# transaction ends. A process killed while that backend commits has lost its session lock (the
# other connection's) before the commit is done; the next run waits for this key so that the
# checkpoint it reads is the one that commit writes.
PG_BATCH_KEY = (0x6D656478, 2)
# (PG_OWNER_NAMESPACE, run id), held shared by every session that runs the run, writing or waiting.
PG_OWNER_NAMESPACE = 0x6D65647A

_in_process = threading.Lock()  # an in-memory SQLite database is only this process's
_in_process_run: int | None = None

# The runs this process runs, and how many times over (threads). A PostgreSQL session's own
# advisory locks never stand in its way, and a process's own POSIX locks never conflict with each
# other, so `unowned` looks here first. Guarded by _owners_guard, which `unowned` holds throughout:
# on SQLite a process has one lock on a run's byte, which a check in another thread would replace.
_owners: Counter[int] = Counter()
_owners_guard = threading.Lock()
_owners_files: dict[str, int] = {}  # lock file -> descriptor, open for the life of the process
_owners_pid = os.getpid()


@contextmanager
def harvest_lock(run_id: int, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the harvest lock for the block, as run `run_id`. When another process holds it, call
    `on_wait` once and wait for it. The run is owned by this process for the block (run_owned)."""
    with run_owned(run_id), _writer_lock(run_id, on_wait):
        yield


@contextmanager
def _writer_lock(run_id: int, on_wait: Callable[[], None] | None) -> Iterator[None]:
    global _in_process_run
    if connection.vendor == "postgresql":
        with _advisory_lock(run_id, on_wait):
            yield
        return
    path = _sqlite_lock_file()
    if path is None:
        if not _in_process.acquire(blocking=False):
            if on_wait:
                on_wait()
            _in_process.acquire()
        _in_process_run = run_id
        try:
            yield
        finally:
            _in_process_run = None
            _in_process.release()
        return
    with _file_lock(path, run_id, on_wait):
        yield


def writing_run() -> int | None:
    """The run that holds the harvest lock (is writing right now), if any. Another run marked
    running waits for the lock, or has no process behind it (see unowned)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objsubid = 2"
                " AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                [PG_RUN_NAMESPACE],
            )
            row = cursor.fetchone()
        return int(row[0]) if row else None
    path = _sqlite_lock_file()
    if path is None:
        return _in_process_run
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the holder wrote its run id into the file
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        return None  # free (a shared lock is released when the descriptor closes)
    finally:
        os.close(fd)


@contextmanager
def _advisory_lock(run_id: int, on_wait: Callable[[], None] | None) -> Iterator[None]:
    # Session level, on this thread's connection: it outlives the batches' transactions.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", list(PG_LOCK_KEY))
        if not cursor.fetchone()[0]:
            if on_wait:
                on_wait()
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", list(PG_LOCK_KEY))
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [PG_RUN_NAMESPACE, run_id])
        cursor.execute("SELECT pg_advisory_lock(%s, %s), pg_advisory_unlock(%s, %s)", [*PG_BATCH_KEY, *PG_BATCH_KEY])
    try:
        yield
    finally:
        _pg_release(
            "SELECT pg_advisory_unlock(%s, %s), pg_advisory_unlock(%s, %s)", [PG_RUN_NAMESPACE, run_id, *PG_LOCK_KEY]
        )


@contextmanager
def run_owned(run_id: int) -> Iterator[None]:
    """Mark run `run_id` as run by this process for the block, whether it writes or waits to. The
    database (a shared advisory key) or the operating system (a shared lock on the run's byte of
    `<database>.harvest-runs`) lets go when the process ends, however it ends."""
    with _owners_guard:
        _forget_parents_owners()
        _owners[run_id] += 1
        if connection.vendor != "postgresql" and _owners[run_id] == 1 and (fd := _owners_file()) is not None:
            # Blocks only while another process's `unowned` looks at this run.
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, run_id)
    try:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock_shared(%s, %s)", [PG_OWNER_NAMESPACE, run_id])
        yield
    finally:
        with _owners_guard:
            _owners[run_id] -= 1
            if not _owners[run_id]:
                del _owners[run_id]
                if connection.vendor != "postgresql" and (fd := _owners_file()) is not None:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, run_id)
        if connection.vendor == "postgresql":
            _pg_unlock_owner(run_id)


def _pg_unlock_owner(run_id: int) -> None:
    _pg_release("SELECT pg_advisory_unlock_shared(%s, %s)", [PG_OWNER_NAMESPACE, run_id])


def _pg_release(sql: str, params: list[int]) -> None:
    """Give up session advisory keys. Ctrl-C between a query's sending and its answer leaves the
    connection busy ("another command is already in progress"): closing it ends the session, and
    its keys with it, where failing here would replace the interrupt with this error."""
    if connection.connection is None or connection.connection.closed:
        return  # closed: the keys went with the session
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    except DatabaseError:
        close_connection()


def close_connection(db: BaseDatabaseWrapper = connection) -> None:
    """Close this thread's connection (or `db`), ending its session and every advisory key it
    holds, also when an interrupt left a query in flight (the connection is then unusable). That
    query is cancelled first: the server notices a closed connection only once the query is done,
    and a wait for the harvest lock could last the length of another run."""
    raw = db.connection
    busy = db.vendor == "postgresql" and raw is not None and not raw.closed
    if busy and raw.info.transaction_status == TransactionStatus.ACTIVE:
        try:
            raw.cancel_safe(timeout=5)
        except Exception:  # noqa: BLE001, S110 - closing ends the session all the same, only later
            pass
    db.close()


@contextmanager
def unowned(run_id: int) -> Iterator[bool]:
    """Whether no process runs run `run_id` (see run_owned); if none does, none can begin to
    until the block ends. A run marked running in the database that no process runs can then be
    marked stopped without ever marking one that is running. Takes no transaction: on SQLite one
    would wait for the batch another process is writing."""
    with _owners_guard:
        _forget_parents_owners()
        if _owners[run_id]:
            yield False
            return
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [PG_OWNER_NAMESPACE, run_id])
                free = bool(cursor.fetchone()[0])
            try:
                yield free
            finally:
                if free:
                    _pg_release("SELECT pg_advisory_unlock(%s, %s)", [PG_OWNER_NAMESPACE, run_id])
            return
        fd = _owners_file()
        if fd is None:  # an in-memory database is only this process's
            yield True
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, run_id)
        except OSError:  # EACCES or EAGAIN: another process holds its byte
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, run_id)


def _owners_file() -> int | None:
    """This process's descriptor of `<database>.harvest-runs`. Never closed: closing any descriptor
    of a file gives up every POSIX lock the process holds on it."""
    path = beside_sqlite_database(".harvest-runs")
    if path is None:
        return None
    key = str(path)
    if key not in _owners_files:
        _owners_files[key] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return _owners_files[key]


def _forget_parents_owners() -> None:
    """A forked process (a django-q2 worker) inherits its parent's memory, not its locks."""
    global _owners_pid
    if os.getpid() != _owners_pid:
        _owners_pid = os.getpid()
        _owners.clear()
        for fd in _owners_files.values():
            os.close(fd)  # holds none of the parent's locks in this process: closing gives up nothing of it
        _owners_files.clear()


def hold_batch_key() -> None:
    """Inside a batch transaction on the writer thread's connection (PostgreSQL): see PG_BATCH_KEY."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", list(PG_BATCH_KEY))


@contextmanager
def _file_lock(path: Path, run_id: int, on_wait: Callable[[], None] | None) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(run_id).encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _sqlite_lock_file() -> Path | None:
    return beside_sqlite_database(".harvest-lock")


def sqlite_lock_path(name: str) -> Path | None:
    """The lock file beside the SQLite database `name`, or None for an in-memory one."""
    return _beside(name, ".harvest-lock")


def beside_sqlite_database(suffix: str) -> Path | None:
    """The file `<database><suffix>` beside this connection's SQLite database, or None for an
    in-memory one (only this process's: nothing to share)."""
    return _beside(str(connection.settings_dict["NAME"] or ""), suffix)


def _beside(name: str, suffix: str) -> Path | None:
    if not name or connection.creation.is_in_memory_db(name):  # type: ignore[attr-defined]
        return None
    return Path(name).with_name(Path(name).name + suffix)
