"""What every management command that reads or writes the configured database shares."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections
from django.db.migrations.executor import MigrationExecutor

# Names of databases found migrated in this process: a migrated database stays so, and tests call
# commands often.
_migrated: set[str] = set()


def unapplied_migrations(alias: str = DEFAULT_DB_ALIAS) -> list[str]:
    """`app.migration` names the database still lacks (all of them on a new, empty database)."""
    executor = MigrationExecutor(connections[alias])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]


def database_label(alias: str = DEFAULT_DB_ALIAS) -> str:
    """The database's engine and name, never its password."""
    conn = connections[alias]
    return f"{conn.vendor} database {conn.settings_dict.get('NAME')!s}"


class DatabaseCommand(BaseCommand):
    """Refuses, with the command to run, a database that is not migrated, instead of failing with
    a traceback about a missing table halfway through; and one it cannot connect to, with the reason."""

    def execute(self, *args: Any, **options: Any) -> str | None:
        name = str(connections[DEFAULT_DB_ALIAS].settings_dict.get("NAME"))
        try:
            missing = [] if name in _migrated else unapplied_migrations()
        except OperationalError as exc:  # a server down, a database name mistyped, a wrong password
            raise CommandError(f"cannot connect to the {database_label()}: {' '.join(str(exc).split())}") from None
        if not missing:
            _migrated.add(name)
        else:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise CommandError(
                f"the {database_label()} is not migrated ({len(missing)} migrations not applied: {shown}); "
                "run `manage.py migrate` first"
            )
        return super().execute(*args, **options)
