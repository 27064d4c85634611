from django.apps import AppConfig


class DisclosureConfig(AppConfig):
    name = "disclosure"
    verbose_name = "Disclosure"

    def ready(self) -> None:
        from disclosure.services import owners_export_enrich
        from harvest.services import register_export_enricher

        register_export_enricher(owners_export_enrich)
