"""Shodan's one request per second per API key, kept by every process that uses the database.

Shodan counts a key's requests whoever sends them: a scheduled search in a django-q2 worker and
a `harvest --count-only` at a terminal, or two workers on two machines, share the allowance.
shodan_client asks its pacer for a slot before each request; this pacer keeps the slots where
all of those processes see them. A request takes its key's next free slot in one short step and
then waits for it holding nothing, so a process interrupted (Ctrl-C) or killed while it waits
leaves nothing behind; at worst the slot it took goes unused.

- PostgreSQL: a row per key (ShodanPace), taken with one upsert on a connection of the pacer's
  own, in autocommit, timed by the server's clock (processes on several machines agree on it).
  Not on the caller's connection: a search run writes its pages in transactions there, and a
  slot taken inside one would be seen by no one until the commit, its row lock holding up every
  other process's requests until then.
- SQLite: a file beside the database (`<database>.shodan-pace`), read and written under a lock
  held for just that. Not a table: a batch's transaction holds the database's write lock, even
  this thread's own, which the pacer could then never get.
- An in-memory SQLite database is only this process's: its requests are paced within it.

Keys are named by shodan_client.key_id, a hash: the key itself is neither stored nor logged.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from harvest.locking import beside_sqlite_database, close_connection
from harvest.models import ShodanPace
from harvest.shodan_client import MAX_SLOTS_AHEAD, ProcessPacer, next_slot

# The slot is statement_timestamp() or, when later, the one the key's last request left (no
# further off than MAX_SLOTS_AHEAD intervals); the next request's is one interval after it.
RESERVE_SQL = f"""
INSERT INTO {ShodanPace._meta.db_table} AS pace (key_id, next_at)
VALUES (%(key)s, statement_timestamp() + make_interval(secs => %(interval)s::float8))
ON CONFLICT (key_id) DO UPDATE SET next_at = LEAST(
    GREATEST(pace.next_at, statement_timestamp()),
    statement_timestamp() + make_interval(secs => %(ahead)s::float8)
) + make_interval(secs => %(interval)s::float8)
RETURNING EXTRACT(EPOCH FROM pace.next_at - statement_timestamp())::float8 - %(interval)s::float8
"""  # noqa: S608 - the table name is ours
MAX_PACE_FILE_BYTES = 1 << 20


class SharedPacer:
    """The pacer of every process that uses this database (see the module docstring)."""

    def __init__(self) -> None:
        self._in_process = ProcessPacer()
        self._own = threading.local()  # (pid, connection) per thread: connections are per thread
        self._forked_away: list[BaseDatabaseWrapper] = []

    def reserve(self, key_id: str, interval: float) -> float:
        if connection.vendor == "postgresql":
            return self._reserve_in_postgres(key_id, interval)
        path = beside_sqlite_database(".shodan-pace")
        if path is None:
            return self._in_process.reserve(key_id, interval)
        return _reserve_in_file(path, key_id, interval)

    def reset(self) -> None:
        """Close this thread's connection (settings changed, tests). The slots taken stay taken:
        their requests were sent."""
        db = self._connection(create=False)
        if db is not None:
            close_connection(db)

    def _reserve_in_postgres(self, key_id: str, interval: float) -> float:
        params = {"key": key_id, "interval": interval, "ahead": interval * MAX_SLOTS_AHEAD}
        try:
            return self._execute(params)
        except DatabaseError:
            # A connection that the server ended while it was idle (a restart, an idle timeout) is
            # found broken only now: once more on a new one.
            return self._execute(params)

    def _execute(self, params: dict) -> float:
        db = self._connection(create=True)
        assert db is not None
        try:
            with db.cursor() as cursor:
                cursor.execute(RESERVE_SQL, params)
                return float(cursor.fetchone()[0])
        except BaseException:
            # An error may leave the connection broken, and Ctrl-C with the statement in flight
            # leaves it busy: the next request opens a new one. The slot, taken or not, holds nothing.
            close_connection(db)
            raise

    def _connection(self, *, create: bool) -> BaseDatabaseWrapper | None:
        held: tuple[int, BaseDatabaseWrapper] | None = getattr(self._own, "held", None)
        if held is not None and held[0] != os.getpid():
            # Inherited by a forked process (a django-q2 worker): the session is the parent's, and
            # closing it, even by letting it be collected, would end the parent's.
            self._forked_away.append(held[1])
            held = self._own.held = None
        if held is None and create:
            held = self._own.held = (os.getpid(), connections.create_connection(DEFAULT_DB_ALIAS))
        return None if held is None else held[1]


def _reserve_in_file(path: Path, key_id: str, interval: float) -> float:
    # Opened for each request: closing it gives up the lock, however the block is left.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for one read and one write, never while a request waits
        # The wall clock: the processes that share the file share the machine, not a monotonic clock.
        now = time.time()
        taken = {key: until for key, until in _read_slots(fd).items() if until > now}  # past slots hold nothing
        taken[key_id], wait = next_slot(taken.get(key_id), now, interval)
        data = json.dumps(taken).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return wait
    finally:
        os.close(fd)


def _read_slots(fd: int) -> dict[str, float]:
    try:
        slots = json.loads(os.pread(fd, MAX_PACE_FILE_BYTES, 0) or b"{}")
    except ValueError:
        return {}  # a process killed while it wrote: the slots start afresh
    if not isinstance(slots, dict):
        return {}
    return {str(key): float(until) for key, until in slots.items() if isinstance(until, int | float)}
