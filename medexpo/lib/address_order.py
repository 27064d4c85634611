"""Addresses in numeric order on both databases: IPv4 before IPv6, then by number.

PostgreSQL keeps a GenericIPAddressField as `inet`, which sorts that way, and its index serves the
sort. SQLite keeps the text, which sorts 10.0.0.10 before 10.0.0.2 and IPv6 among IPv4. Order by
`<field>__numeric` (`order_by("host__ip__numeric")`, in Meta.ordering, as an admin column's
ordering): on PostgreSQL that is the column itself; on SQLite, a key that a function registered on
each connection computes while sorting. Nothing is stored, so ingest pays nothing for it.

That key costs a Python call per row sorted: a query that only looks rows up (by id, to fill a
dict) says `.order_by()`, or the models' address order would sort it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from django.db.models import GenericIPAddressField, Transform

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler, _AsSqlType

SQLITE_FUNCTION = "medexpo_address_key"


def address_key(value: object) -> bytes | None:
    """Bytes that sort like the address: its version, then its 4 or 16 bytes in network order.

    Called for every row a sort reads (a million on a large service list): kept to one parse.
    """
    try:
        if ":" in value:  # type: ignore[operator]
            return b"\x06" + socket.inet_pton(socket.AF_INET6, value)  # type: ignore[arg-type]
        return b"\x04" + socket.inet_pton(socket.AF_INET, value)  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        # An exception would fail the whole query: a value that is no address goes last, as text.
        return None if value is None else b"\xff" + str(value).encode("utf-8", "surrogatepass")


@GenericIPAddressField.register_lookup
class NumericAddress(Transform):
    """For ordering only: on SQLite the value is a key, not the address."""

    lookup_name = "numeric"

    def as_sql(
        self,
        compiler: SQLCompiler,
        connection: BaseDatabaseWrapper,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> _AsSqlType:
        # PostgreSQL: the bare column, so that ORDER BY is the one its index answers.
        return compiler.compile(self.lhs)

    def as_sqlite(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra_context: Any) -> _AsSqlType:
        return super().as_sql(compiler, connection, function=SQLITE_FUNCTION, **extra_context)


def register_sqlite_function(sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
    """connection_created receiver: the key function on every SQLite connection Django opens."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(SQLITE_FUNCTION, 1, address_key, deterministic=True)
