"""python manage.py demo: the whole pipeline on the bundled sample data, with no key and no network."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

SAMPLE = Path(settings.BASE_DIR) / "fixtures" / "sample" / "banners.jsonl.gz"


class Command(BaseCommand):
    help = "Set up the database and run harvest on the bundled sample data."

    def handle(self, *args: object, **options: object) -> None:
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        self.stdout.write(self.style.MIGRATE_HEADING("1. Database"))
        call_command("migrate", verbosity=0)
        self.stdout.write(f"   {settings.DATABASES['default']['NAME']}")
        if not SAMPLE.exists():
            raise CommandError(f"the bundled sample corpus is missing: {SAMPLE}")
        self.stdout.write(self.style.MIGRATE_HEADING("2. Harvest the bundled sample (no Shodan key needed)"))
        call_command("harvest", file=str(SAMPLE), country="NL")
