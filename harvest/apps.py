from django.apps import AppConfig


class HarvestConfig(AppConfig):
    name = "harvest"
    verbose_name = "Harvest"

    def ready(self) -> None:
        # Modules that register harvest sources and export columns are imported here.
        from harvest import search  # noqa: F401  (registers the search source)
        from harvest.classify import services  # noqa: F401  (registers the verdict export columns)
        from harvest.pacing import SharedPacer
        from harvest.shodan_client import use_pacer

        # Shodan's limit is per key, not per process: every process paces through the database.
        use_pacer(SharedPacer())
