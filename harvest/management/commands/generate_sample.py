"""python manage.py generate_sample [--out DIR] [--seed N] [--count N] [--json]"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from harvest.samplegen.corpus import DEFAULT_COUNT, SampleError, sample_generate
from harvest.samplegen.stream import DEFAULT_SEED
from medexpo.lib.progress import Progress


class Command(BaseCommand):
    help = "Regenerate the bundled synthetic sample corpus (banners, labels, host lookups, RDAP answers)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--out",
            metavar="DIR",
            default=str(Path(settings.BASE_DIR) / "fixtures" / "sample"),
            help="folder to write into (default: fixtures/sample, the bundled corpus, which it overwrites)",
        )
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"generator seed (default {DEFAULT_SEED})")
        parser.add_argument(
            "--count", type=int, default=DEFAULT_COUNT, help=f"number of banners (default {DEFAULT_COUNT})"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object, no progress bar")

    def handle(self, *args: object, **options: Any) -> None:
        enabled = False if options["json"] else None
        with Progress(total=options["count"], unit="banner", desc="generate", enabled=enabled) as bar:
            try:
                summary = sample_generate(
                    out_dir=Path(options["out"]), seed=options["seed"], count=options["count"], progress=bar.moved_to
                )
            except SampleError as exc:
                raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        w = self.stdout.write
        w(f"Sample corpus in {options['out']} (seed {summary['seed']}): {summary['banners']} banners, "
          f"{summary['hosts']} host lookups, {summary['rdap_networks']} RDAP answers")  # fmt: skip
        for title in ("by_class", "by_category", "by_segment"):
            w(f"  {title[3:]}")
            for key, count in summary[title].items():
                w(f"    {key:<24}{count:>8}")
