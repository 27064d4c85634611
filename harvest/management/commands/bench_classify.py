"""python manage.py bench_classify [--services N] [--corpus FILE] [--engine-only] [--reuse] [--json]

Two measurements, each against a baseline taken in the same run:

1. The pure engine on the sample corpus, in this single process (so: per core): banners per
   second for read + decode (the baseline), for read + decode + classify, and for classify alone.
2. `classify --all` end to end over N stored services (generated with harvest.samplegen, ingested
   through the normal harvest path), with the time split into database read, JSON decode, engine
   and database write, to show what bounds it.

It writes N services into the configured database: point DATABASE_URL at a database of its own.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import connection

from disclosure.models import Network, Organisation
from harvest.classify import services
from harvest.classify.engine import classify
from harvest.classify.rules import load_rules
from harvest.classify.types import banner_from_shodan
from harvest.models import HarvestRun, Service
from harvest.samplegen import DEFAULT_SEED, write_banners
from harvest.services import harvest_execute, harvest_file_start
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.progress import Progress

SAMPLE_CORPUS = Path(settings.BASE_DIR) / "fixtures" / "sample" / "banners.jsonl.gz"
ENGINE_TARGET = 20_000  # banners per second per core
MIN_SECONDS = 3.0  # repeat passes over the corpus until each loop has run at least this long


class Command(DatabaseCommand):
    help = "Benchmark classification: the pure engine per core, and classify --all over N stored services."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--services", type=int, default=1_000_000, help="stored services for the end-to-end run")
        parser.add_argument(
            "--corpus",
            metavar="FILE",
            default=str(SAMPLE_CORPUS),
            help="banner file (.json or .json.gz) for the engine measurement (default: the bundled sample)",
        )
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sample generator seed")
        parser.add_argument("--batch-size", type=int, default=services.BATCH_SIZE, help="services per transaction")
        parser.add_argument("--engine-only", action="store_true", help="skip the end-to-end database run")
        parser.add_argument(
            "--reuse", action="store_true", help="use the services already stored if there are at least --services"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: Any) -> None:
        if not options["engine_only"]:
            _check_database(options["services"], reuse=options["reuse"])  # before minutes of engine loops
        result = {"machine": _machine(), "engine": self._engine(Path(options["corpus"]))}
        if not options["json"]:
            self._print_engine(result["engine"])
        if not options["engine_only"]:
            result["end_to_end"] = self._end_to_end(options)
            if not options["json"]:
                self._print_end_to_end(result["end_to_end"])
        if options["json"]:
            self.stdout.write(json.dumps(result))

    # --- 1. the pure engine ----------------------------------------------------------------

    def _engine(self, corpus: Path) -> dict:
        if not corpus.is_file():
            raise CommandError(f"no corpus at {corpus}; pass --corpus or generate the sample corpus")
        raws = _read_lines(corpus)
        contexts = _host_contexts(raws)
        rules = load_rules()

        def decode() -> list:
            return [banner_from_shodan(orjson.loads(raw), contexts[i]) for i, raw in enumerate(raws)]

        def decode_and_classify() -> None:
            for i, raw in enumerate(raws):
                classify(banner_from_shodan(orjson.loads(raw), contexts[i]), rules)

        banners = decode()
        classify_alone = lambda: [classify(b, rules) for b in banners]  # noqa: E731
        baseline = _timed(decode, len(raws))
        full = _timed(decode_and_classify, len(raws))
        alone = _timed(classify_alone, len(raws))
        engine_seconds = full["seconds"] - baseline["seconds"] * full["banners"] / baseline["banners"]
        return {
            "corpus": str(corpus),
            "corpus_banners": len(raws),
            "rules_version": rules.version,
            "baseline_read_decode": baseline,
            "read_decode_classify": full,
            "classify_alone": alone,
            "engine_rate_by_difference": round(full["banners"] / engine_seconds) if engine_seconds > 0 else None,
            "target_per_core": ENGINE_TARGET,
            "meets_target": alone["rate"] >= ENGINE_TARGET,
        }

    def _print_engine(self, e: dict) -> None:
        w = self.stdout.write
        w(f"Engine, one process, {e['corpus_banners']} banners of {e['corpus']} (rules {e['rules_version']})")
        for label, key in (
            ("read + decode (baseline)", "baseline_read_decode"),
            ("read + decode + classify", "read_decode_classify"),
            ("classify alone", "classify_alone"),
        ):
            m = e[key]
            w(f"  {label:<28}{m['rate']:>12,.0f} banners/s   ({m['banners']:,} in {m['seconds']:.2f} s)")
        verdict = "meets" if e["meets_target"] else "misses"
        w(f"  engine {verdict} the target of {e['target_per_core']:,} banners/s per core")

    # --- 2. end to end -----------------------------------------------------------------------

    def _end_to_end(self, options: dict) -> dict:
        n = options["services"]
        stored = Service.objects.count()
        ingest = None
        if not stored:
            ingest = self._generate_and_ingest(n, options["seed"], options["json"])
            stored = Service.objects.count()
        rules = load_rules()
        with Progress(
            total=stored, unit="service", desc="classify --all", enabled=False if options["json"] else None
        ) as bar:
            summary = services.classification_run_all(
                rules=rules, batch_size=options["batch_size"], progress=bar.advance
            )
        run = summary.as_dict()
        split = run["time_split"]
        database = split["read"] + split["write"]
        bound = max(
            (("database", database), ("engine", split["engine"]), ("decode", split["parse"])), key=lambda x: x[1]
        )
        return {
            "database": connection.vendor,
            "services": stored,
            "ingest": ingest,
            "classify_all": run,
            "database_seconds": round(database, 3),
            "bound_by": bound[0],
        }

    def _generate_and_ingest(self, n: int, seed: int, quiet: bool) -> dict:
        with tempfile.TemporaryDirectory(prefix="bench_classify_") as folder:
            path = Path(folder) / "banners.jsonl.gz"
            t0 = time.perf_counter()
            write_banners(path, n, seed)
            generated = time.perf_counter() - t0
            run = harvest_file_start(path=path)
            size = path.stat().st_size
            t0 = time.perf_counter()
            with Progress(
                total=size, unit="B", unit_scale=True, desc="ingest", enabled=False if quiet else None
            ) as bar:
                run = harvest_execute(run=run, progress=bar.moved_to)
            ingested = time.perf_counter() - t0
        if run.status != "completed":
            raise CommandError(f"ingest of the generated services failed: {run.message}")
        return {
            "generated": n,
            "generate_seconds": round(generated, 1),
            "ingest_seconds": round(ingested, 1),
            "ingest_rate": round(run.accepted / ingested) if ingested else None,
            "accepted": run.accepted,
        }

    def _print_end_to_end(self, r: dict) -> None:
        w = self.stdout.write
        w("")
        if r["ingest"]:
            i = r["ingest"]
            w(
                f"Generated {i['generated']:,} banners in {i['generate_seconds']} s, ingested {i['accepted']:,} "
                f"in {i['ingest_seconds']} s ({i['ingest_rate']:,} banners/s)"
            )
        c = r["classify_all"]
        w(
            f"classify --all over {r['services']:,} services on {r['database']}: "
            f"{c['seconds']:.1f} s, {c['rate_per_second']:,.0f} services/s"
        )
        total = c["seconds"] or 1.0
        for part, seconds in c["time_split"].items():
            w(f"  {part:<8}{seconds:>10.1f} s  {seconds / total:>6.1%}")
        w(f"  bound by: {r['bound_by']} (database read + write {r['database_seconds']:.1f} s)")


def _check_database(n: int, *, reuse: bool) -> None:
    """The end-to-end run writes N services and their verdicts: only into a database of its own,
    empty, or (--reuse) one that already holds at least N services and nothing else of value."""
    stored = Service.objects.count()
    if reuse and stored >= n:
        return
    held = {
        "services": stored,
        "harvest runs": HarvestRun.objects.count(),
        "organisations": Organisation.objects.count(),
        "networks": Network.objects.count(),
    }
    found = ", ".join(f"{count:,} {name}" for name, count in held.items() if count)
    if found:
        raise CommandError(
            f"the database already holds {found}; give the benchmark an empty database of its own "
            "(or --reuse when it holds at least --services services)"
        )


def _read_lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return [line for line in handle if line.strip()]


def _host_contexts(raws: list[bytes]) -> list[tuple[str, ...]]:
    """Each banner's host context as classify gives it: the modules of the host's other services."""
    objs = [orjson.loads(raw) for raw in raws]
    by_host: dict[object, list[tuple[int, str]]] = defaultdict(list)
    for i, obj in enumerate(objs):
        module = (obj.get("_shodan") or {}).get("module") or f"{obj.get('port')}/{obj.get('transport', 'tcp')}"
        by_host[obj.get("ip_str") or obj.get("ip")].append((i, module))
    contexts: list[tuple[str, ...]] = [()] * len(objs)
    for members in by_host.values():
        for i, _ in members:
            contexts[i] = tuple(m for j, m in members if j != i)[: services.MAX_HOST_MODULES]
    return contexts


def _timed(fn: Callable[[], object], per_pass: int) -> dict:
    fn()  # warm up: caches, regex compilation
    passes, started = 0, time.perf_counter()
    while True:
        fn()
        passes += 1
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_SECONDS:
            break
    return {"banners": passes * per_pass, "seconds": round(elapsed, 3), "rate": round(passes * per_pass / elapsed)}


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "database": connection.vendor,
    }
