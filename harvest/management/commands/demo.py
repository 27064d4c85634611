"""python manage.py demo: the whole pipeline on the bundled sample data, with no key and no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

SAMPLE = Path(settings.BASE_DIR) / "fixtures" / "sample"


class Command(BaseCommand):
    help = "Set up the database and run harvest, classify, owners and the report on the bundled sample data."

    def handle(self, *args: object, **options: Any) -> None:
        if settings.RDAP_CACHE_DAYS < 1:
            raise CommandError(
                "the demo finds owners in the bundled RDAP answers only, and with RDAP_CACHE_DAYS=0 they "
                "expire as they are imported, so every host would be looked up on the network: unset it"
            )
        banners = SAMPLE / "banners.jsonl.gz"
        if not banners.exists():
            raise CommandError(f"the bundled sample corpus is missing: {banners}")
        out = Path(settings.DATA_DIR)
        out.mkdir(parents=True, exist_ok=True)
        step = self._step

        step("1. Database", "migrate")
        call_command("migrate", verbosity=0)
        self.stdout.write(f"   {settings.DATABASES['default']['NAME']}")

        step("2. Harvest the bundled sample (Shodan download format, no key needed)", "harvest --file")
        call_command("harvest", file=str(banners), country="NL", stdout=self.stdout)
        call_command("harvest", hosts=str(SAMPLE / "hosts.jsonl"), country="NL", stdout=self.stdout)

        step("3. Classify every banner (rules in harvest/rules/)", "classify")
        call_command("classify", evaluate=str(SAMPLE / "labels.jsonl"), stdout=self.stdout)

        step("4. Owners from the bundled RDAP answers (no network)", "import_rdap_cache + resolve_owners")
        call_command("import_rdap_cache", str(SAMPLE / "rdap"), stdout=self.stdout)
        call_command("resolve_owners", stdout=self.stdout)

        report = out / "report"
        step("5. Exposure report", f"exposure_report --out {report}")
        call_command("exposure_report", out=str(report), stdout=self.stdout)

        export = out / "services.jsonl"
        step("6. Export", f"export_services --output {export}")
        call_command("export_services", format="jsonl", output=str(export), stdout=self.stdout)

        self.stdout.write(self.style.SUCCESS("\nDone. Where to look next:"))
        self.stdout.write(f"   report        {report}/exposure_report.html (and .pdf, .json, .csv, PNG and SVG charts)")
        self.stdout.write(f"   services      {export}")
        env = "DEBUG=1" if out == Path(settings.BASE_DIR) / "data" else f"DEBUG=1 MEDEXPO_DATA_DIR={out}"
        self.stdout.write(f"   admin         {env} .venv/bin/python manage.py createsuperuser")
        self.stdout.write(f"                 {env} .venv/bin/python manage.py runserver")
        self.stdout.write("                 then http://127.0.0.1:8000/admin/")

    def _step(self, title: str, command: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n{title}") + f"   [{command}]")
