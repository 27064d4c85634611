"""Fast bulk inserts and updates for the ingest hot path, on PostgreSQL and on SQLite.

The ORM's bulk_create quotes every value client-side and bulk_update builds CASE expressions;
at tens of thousands of banners a second both dominate. PostgreSQL gets COPY (into the table, or
into a temporary stage for updates); SQLite gets executemany, which is already fast in-process.
Primary keys are allocated up front so callers know the ids of what they inserted.
Must be called inside a transaction: the SQLite id allocation relies on the write lock.
"""

from __future__ import annotations

import functools
import io
import itertools
import socket
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from django.db import connection
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.copy import Copy, FileWriter
from psycopg.pq import Format
from psycopg.types.datetime import TimestamptzLoader
from psycopg.types.json import set_json_loads

_stage_names = itertools.count()
SQLITE_CHUNK = 900  # stays below SQLite's limit on bound parameters


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def datetime_adapter() -> Callable[[datetime], object]:
    """How the backend's raw driver wants datetimes: as they are for psycopg, as text for SQLite."""
    if is_postgres():
        return _identity
    return connection.ops.adapt_datetimefield_value


def _identity(value: datetime) -> datetime:
    return value


def tune_batch_transaction() -> None:
    """Settings for one batch transaction of a bulk job on PostgreSQL (no-op elsewhere).

    - synchronous_commit off: the server acknowledges the commit before its WAL reaches the
      disk. Safe for batch jobs that can redo lost work: an ingest batch commits with its
      checkpoint, so a server crash loses whole recent batches together with their checkpoints
      and resuming reads them again; lost verdicts are simply pending again.
    - enable_seqscan and jit off: each batch looks up a few thousand rows by index. During and
      right after a bulk harvest the statistics lag far behind the table's size, and the planner
      would otherwise scan the whole table (and JIT-compile the plan) for every batch.
    """
    if is_postgres():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF; SET LOCAL enable_seqscan TO OFF; SET LOCAL jit TO OFF")


def insert_rows(table: str, columns: Sequence[str], rows: Sequence[tuple]) -> list[int]:
    """Insert rows (values in `columns` order) and return their new ids, in order."""
    if not rows:
        return []
    assert connection.in_atomic_block, "bulk writes must run inside a transaction"
    ids = allocate_ids(table, len(rows))
    copy_in(table, ["id", *columns], [(pk, *row) for pk, row in zip(ids, rows, strict=True)])
    return ids


def copy_in(
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple],
    *,
    payload: bytes | None = None,
    binary: bool = False,
) -> None:
    """Insert rows as they are (ids included): COPY on PostgreSQL, executemany on SQLite.

    On PostgreSQL `payload` is the rows already formatted: in COPY text (see copy_text), or in
    COPY's binary format when `binary` (see copy_binary); otherwise copy_text formats them here."""
    if not rows:
        return
    cols = ", ".join(columns)
    with connection.cursor() as cursor:
        if is_postgres():
            if payload is None:
                payload, binary = copy_text(rows), False
            options = " WITH (FORMAT binary)" if binary else ""
            with cursor.cursor.copy(f"COPY {table} ({cols}) FROM STDIN{options}") as copy:
                copy.write(payload)
            return
        marks = ", ".join(["%s"] * len(columns))
        cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)  # noqa: S608 - identifiers are ours


def copy_binary(rows: Iterable[Sequence[Any]], types: Sequence[str]) -> bytes:
    """Rows in COPY's binary format, for columns of the PostgreSQL types `types`, by psycopg's
    own dumpers (C code), without a round trip: nothing is sent until copy_in(binary=True).

    For wide text rows binary is much cheaper on both sides: no escaping here, and the server
    neither scans nor unescapes the text. A 1.6 KB service row takes about a quarter of the
    Python time of escaped text, and COPY into the services table about a third less of the
    server's time (docs/BENCHMARKS.md). Text must hold no NUL and no lone surrogate (as for
    text COPY); timestamps must be aware; `inet` and `jsonb` columns take canonical address
    text and JSON text (see _InetFromText).
    """
    buffer = io.BytesIO()
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        for dumper in _TEXT_AS_BINARY:  # on this cursor only
            cursor.adapters.register_dumper(None, dumper)
        with Copy(cursor, binary=True, writer=FileWriter(buffer)) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    return buffer.getvalue()


# Values that ingest already holds as checked text, for binary COPY into inet and jsonb columns:
# psycopg's own binary dumpers take ipaddress objects and Python values, which would cost more to
# make than formatting text (the server's wire formats: src/backend/utils/adt/network.c, jsonb.c).


class _InetFromText(Dumper):
    """A canonical address (harvest.records.parse_address) as binary inet: family, bits,
    is_cidr, length, then the address bytes."""

    format = Format.BINARY
    oid = postgres.types["inet"].oid

    def dump(self, obj: str) -> bytes:
        if ":" in obj:
            return b"\x03\x80\x00\x10" + socket.inet_pton(socket.AF_INET6, obj)
        return b"\x02\x20\x00\x04" + socket.inet_pton(socket.AF_INET, obj)


class _JsonbFromText(Dumper):
    """JSON text (made by orjson, so valid) as binary jsonb: a version byte, then the text."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


_TEXT_AS_BINARY = (_InetFromText, _JsonbFromText)


def update_rows(table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """Update `columns` of existing rows; each row is (id, *values)."""
    if not rows:
        return
    if is_postgres():
        _update_postgres(table, columns, rows)
        return
    assignments = ", ".join(f"{c} = %s" for c in columns)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET {assignments} WHERE id = %s",  # noqa: S608 - identifiers are ours
            [(*row[1:], row[0]) for row in rows],
        )


def set_column(table: str, column: str, value: Any, ids: Sequence[int]) -> None:
    """UPDATE table SET column = value for the given ids, in one statement."""
    if not ids:
        return
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id = ANY(%s)", [value, list(ids)])  # noqa: S608
            return
        for start in range(0, len(ids), SQLITE_CHUNK):
            part = ids[start : start + SQLITE_CHUNK]
            marks = ", ".join(["%s"] * len(part))
            cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id IN ({marks})", [value, *part])  # noqa: S608


def pg_select_any(sql: str, *arrays: Iterable[int | str]) -> list[tuple]:
    """Run a SELECT with array parameters on PostgreSQL, loading timestamps in C.

    Django registers a Python timestamptz loader on its connections (to attach its time zone);
    at hundreds of thousands of values per run that dominates, so this cursor uses psycopg's own
    loaders. The session time zone is UTC, as Django sets it.
    Each array goes as one text literal, cast in `sql` (`%s::inet[]`): psycopg's list adapter
    dumps element by element in Python. Values are numbers, codes or canonical addresses, which
    need no quoting in an array literal.
    """
    literals = ["{" + ",".join(map(str, values)) + "}" for values in arrays]
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
        set_json_loads(orjson.loads, cursor)  # the standard library's json is 2-3x slower
        cursor.execute(sql, literals)
        return cursor.fetchall()


def upsert_rows(table: str, columns: Sequence[str], rows: Sequence[tuple], *, conflict: Sequence[str]) -> None:
    """INSERT rows, updating the other columns of a row whose `conflict` columns already exist."""
    if not rows:
        return
    cols = ", ".join(columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in conflict)
    on_conflict = f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updates}"
    with connection.cursor() as cursor:
        if is_postgres():
            stage = _stage(cursor.cursor, table, columns, rows)
            cursor.cursor.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} {on_conflict}")  # noqa: S608
            return
        marks = ", ".join(["%s"] * len(columns))
        cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}) {on_conflict}", rows)  # noqa: S608


def _update_postgres(table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    assignments = ", ".join(f"{c} = s.{c}" for c in columns)
    with connection.cursor() as cursor:
        stage = _stage(cursor.cursor, table, ["id", *columns], rows)
        cursor.cursor.execute(f"UPDATE {table} t SET {assignments} FROM {stage} s WHERE t.id = s.id")  # noqa: S608


def _stage(raw: Any, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> str:
    """COPY rows into a temporary table shaped like `table` (dropped at commit); return its name."""
    stage = f"_medexpo_stage_{next(_stage_names)}"
    cols = ", ".join(columns)
    raw.execute(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA")  # noqa: S608
    with raw.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
        copy.write(copy_text(rows))
    return stage


def allocate_ids(table: str, count: int) -> list[int]:
    """Ids for `count` new rows of `table`. PostgreSQL draws them from the table's sequence (any
    connection, any transaction); SQLite takes the next free ones, which only holds inside the
    transaction that inserts them."""
    if count == 0:
        return []
    with connection.cursor() as cursor:
        if is_postgres():
            # The sequence by name: pg_get_serial_sequence() in the query would run once per id
            # (9 ms rather than 1 ms for 2,000 ids).
            cursor.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", [_sequence(table), count])
            return [row[0] for row in cursor.fetchall()]
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")  # noqa: S608
        start = cursor.fetchone()[0] + 1
        return list(range(start, start + count))


_sequences: dict[tuple[str, str], str] = {}


def _sequence(table: str) -> str:
    key = (connection.settings_dict["NAME"], table)
    if key not in _sequences:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
            _sequences[key] = cursor.fetchone()[0]
    return _sequences[key]


# --- COPY text format -----------------------------------------------------------------------
# psycopg's write_row adapts every value through its dumpers (about 10 µs a service row, a third
# of it timestamps); formatting the few types ingest writes directly is several times cheaper.
# Substring tests are used rather than a regular expression: on a 1 KB banner a character-class
# search costs 4 µs, the four tests 0.1 µs.


def copy_escape(value: str) -> str:
    """A text value for a COPY text line."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    return value


@functools.lru_cache(maxsize=8192)
def copy_timestamp(value: datetime) -> str:
    """A timestamp for a COPY text line; cached, as a batch repeats its timestamps."""
    return _timestamp(value)


def copy_text(rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows in PostgreSQL's COPY text format: tab-separated, \\N for NULL, specials escaped."""
    lines = []
    for row in rows:
        fields = []
        for value in row:
            kind = type(value)
            if kind is str:
                fields.append(copy_escape(value))
            elif kind is int:
                fields.append(str(value))
            elif kind is datetime:
                fields.append(copy_timestamp(value))
            else:
                fields.append(_copy_other(value))
        lines.append("\t".join(fields))
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def _timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime in a bulk write")
    return value.isoformat()


def _copy_other(value: Any) -> str:
    if value is None:
        return "\\N"
    if type(value) is bool:
        return "t" if value else "f"
    if type(value) is float:
        return repr(value)
    raise TypeError(f"cannot COPY a {type(value).__name__}")
