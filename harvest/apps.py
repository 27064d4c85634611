from django.apps import AppConfig
from django.db.backends.signals import connection_created

from medexpo.lib.address_order import register_sqlite_function


class HarvestConfig(AppConfig):
    name = "harvest"
    verbose_name = "Harvest"

    def ready(self) -> None:
        # SQLite sorts addresses numerically through a function of each connection (ip__numeric).
        connection_created.connect(register_sqlite_function, dispatch_uid="medexpo_address_key")
        # Modules that register harvest sources and export columns are imported here.
        from harvest import search  # noqa: F401  (registers the search source)
        from harvest.classify import services  # noqa: F401  (registers the verdict export columns)
        from harvest.pacing import SharedPacer
        from harvest.shodan_client import use_pacer

        # Shodan's limit is per key, not per process: every process paces through the database.
        use_pacer(SharedPacer())
