"""python manage.py bench_ingest [--banners N] [--million] [--json]

Generates N Shodan-format banners with the sample generator, then measures in the same run:
  baseline   reading and JSON-parsing the same file, nothing else; the fastest of three runs, so
             that a run slowed by something else on the machine cannot flatter the ratios
  validate   reading, parsing and validating it as ingest does (harvest.readers.file_events),
             without the database: the part of ingest's Python work that any design must do
  ingest     `harvest --file` into a fresh scratch database (all inserts), timed from the run's
             recorded start to its finish (the process's own wall time is reported too)
  re-ingest  the same file again (all re-sightings, no inserts)
  floor      (PostgreSQL) the rows that ingest stored, copied back into the emptied tables with
             binary COPY in one transaction: no Python, no merge, no look-ups. What the
             database alone needs to store these rows with their indexes and foreign keys; no
             ingest design that keeps this data model can be faster.
Each step runs as its own process, so peak memory (max RSS) is that step's alone. Each step also
reports the CPU time it cost per banner: the step's process (Python) and, on a PostgreSQL server
on this machine, the server's processes (read from /proc). Their sum over the machine's cores is a
lower bound on the step's wall time that no overlap of the two can beat.
The scratch database lives on the configured server (PostgreSQL) or in a temporary folder
(SQLite) and is dropped afterwards; the configured database itself is never touched.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from harvest.samplegen import write_banners

# The baseline parses with orjson, the parser ingest itself uses. The standard library's json is
# measured too, as a reference point for readers comparing with other tools.
PARSE_ONLY = """
import sys, time, gzip, json, orjson
loads = orjson.loads if sys.argv[2] == "orjson" else json.loads
start = time.perf_counter(); n = 0
with gzip.open(sys.argv[1], "rb") as fh:
    for line in fh:
        loads(line); n += 1
print(n, time.perf_counter() - start)
"""

# Django is set up before the clock starts; the events are what `harvest --file` consumes.
VALIDATE_ONLY = """
import sys, time, django
from pathlib import Path
django.setup()
from harvest.readers import file_events
start = time.perf_counter(); n = 0
for event in file_events(Path(sys.argv[1]), {}, hosts=False):
    n += event[0] == "record"
print(n, time.perf_counter() - start)
"""


BASELINE_RUNS = 3


class Command(BaseCommand):
    help = "Measure ingest speed and peak memory against a parse-only baseline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--banners", type=int, action="append", help="banners to generate (repeatable; default 200,000)"
        )
        parser.add_argument("--million", action="store_true", help="also run 1,000,000 banners")
        parser.add_argument("--seed", type=int, default=2019, help="sample generator seed")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: Any) -> None:
        sizes = bench_sizes(options["banners"], million=options["million"])
        results = [self._measure(n, options["seed"], quiet=options["json"]) for n in sizes]
        summary = {
            "database": connection.vendor,
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            "runs": results,
        }
        if len(results) > 1:
            small, large = results[0], results[-1]
            summary["memory_growth"] = round(large["ingest"]["peak_mb"] / small["ingest"]["peak_mb"] - 1, 3)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        self._print(summary)

    def _measure(self, n: int, seed: int, *, quiet: bool) -> dict:
        with tempfile.TemporaryDirectory(prefix="medexpo-bench-") as tmp:
            path = Path(tmp) / "banners.json.gz"
            if not quiet:
                self.stderr.write(f"generating {n:,} banners ...")
            started = time.perf_counter()
            write_banners(path, n, seed)
            generate_s = time.perf_counter() - started  # generating and gzip-writing, in this process
            size_mb = path.stat().st_size / 1e6
            baseline = min((_parse_only(path, "orjson") for _ in range(BASELINE_RUNS)), key=lambda r: r["seconds"])
            baseline_json = _parse_only(path, "json")
            validate = _validate_only(path)
            with _scratch_database(Path(tmp)) as url:
                _manage(url, "migrate", "-v0")
                if not quiet:
                    self.stderr.write("ingesting ...")
                ingest = _ingest(url, path, n)
                if not quiet:
                    self.stderr.write("re-ingesting ...")
                again = _ingest(url, path, n)
                floor = _floor(url, Path(tmp), n) if url.startswith("postgres") else None
        steps = {"baseline_json": baseline_json, "validate": validate, "ingest": ingest, "reingest": again}
        if floor:
            steps["floor"] = floor
        for step in steps.values():
            step["vs_baseline"] = round(baseline["per_s"] / step["per_s"], 2)
        cpu = ingest["cpu_us"]
        if cpu["database"] is not None:
            us = (cpu["process"] + cpu["database"]) / (os.cpu_count() or 1)
            ingest["cpu_bound"] = {"us": round(us, 1), "vs_baseline": round(us * baseline["per_s"] / 1e6, 2)}
        generate = {"seconds": round(generate_s, 2), "per_s": round(n / generate_s)}
        return {"banners": n, "file_mb": round(size_mb, 1), "generate": generate, "baseline": baseline, **steps}

    def _print(self, s: dict) -> None:
        w = self.stdout.write
        w(f"Ingest benchmark on {s['database']}, {s['cores']} cores, {s['date']}")
        w(
            f"{'banners':>10} {'step':<13} {'seconds':>8} {'banners/s':>10} {'x baseline':>11} {'peak MB':>8}"
            f" {'CPU µs/banner: process':>23} {'database':>9}"
        )
        for r in s["runs"]:
            for name in ("baseline", "baseline_json", "validate", "ingest", "reingest", "floor"):
                if name not in r:
                    continue
                step = r[name]
                factor = f"{step['vs_baseline']:.2f}" if "vs_baseline" in step else "1.00"
                cpu = step["cpu_us"]
                w(
                    f"{r['banners']:>10,} {name:<13} {step['seconds']:>8.1f} {step['per_s']:>10,.0f} "
                    f"{factor:>11} {'-' if step['peak_mb'] is None else round(step['peak_mb']):>8}"
                    f" {_figure(cpu['process']):>23} {_figure(cpu['database']):>9}"
                )
            bound = r["ingest"].get("cpu_bound")
            if bound:
                w(
                    f"{r['banners']:>10,} ingest's CPU over {s['cores']} cores: at least {bound['us']:.1f} µs a "
                    f"banner whatever the overlap, {bound['vs_baseline']:.2f}x baseline"
                )
        for r in s["runs"]:
            g = r["generate"]
            w(f"{r['banners']:>10,} generated in {g['seconds']:.1f} s ({g['per_s']:,} banners/s; not a step)")
        if "memory_growth" in s:
            w(f"peak memory at the largest size vs the smallest: {s['memory_growth']:+.1%}")


def bench_sizes(banners: list[int] | None, *, million: bool) -> list[int]:
    """The sizes to run, smallest first: memory growth compares the last run with the first."""
    sizes = set(banners or [200_000]) | ({1_000_000} if million else set())
    if min(sizes) < 1:
        raise CommandError(f"--banners must be at least 1, not {min(sizes)}")
    return sorted(sizes)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _parse_only(path: Path, parser: str) -> dict:
    return _timed_script(PARSE_ONLY, str(path), parser)


def _validate_only(path: Path) -> dict:
    return _timed_script(VALIDATE_ONLY, str(path))


def _timed_script(script: str, *args: str) -> dict:
    """Run a script that prints "<records> <seconds>" (its own timing, start-up excluded)."""
    cpu = _Cpu()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "medexpo.settings"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=env, cwd=settings.BASE_DIR
    )
    out, peak_mb = _wait(proc)
    count_text, seconds_text = out.split()
    seconds, n = float(seconds_text), int(count_text)
    return {"seconds": round(seconds, 2), "per_s": round(n / seconds), "peak_mb": round(peak_mb), **cpu.per_banner(n)}


def _ingest(url: str, path: Path, n: int) -> dict:
    """Rate over the run's own start and finish; the process's wall time includes Django's start."""
    cpu = _Cpu()
    start = time.perf_counter()
    proc = _manage(url, "harvest", "--file", str(path), "--json", wait=False)
    out, peak_mb = _wait(proc)
    process_seconds = time.perf_counter() - start
    result = json.loads(out)
    assert result["accepted"] == n, result
    seconds = (
        datetime.fromisoformat(result["finished_at"]) - datetime.fromisoformat(result["started_at"])
    ).total_seconds()
    return {
        "seconds": round(seconds, 2),
        "process_seconds": round(process_seconds, 2),
        "per_s": round(n / seconds),
        "peak_mb": round(peak_mb),
        "new": result["new"],
        "unchanged": result["unchanged"],
        **cpu.per_banner(n),
    }


FLOOR_TABLES = ("harvest_host", "harvest_service")  # in foreign-key order


def _floor(url: str, tmp: Path, n: int) -> dict:
    """Copy the stored hosts and services out, empty the tables, and time copying them back, in
    COPY's binary format: the server's cheapest way in (ingest writes services so)."""
    import psycopg

    conninfo = url.replace("postgres://", "postgresql://", 1)
    dumps = {table: tmp / f"{table}.copy" for table in FLOOR_TABLES}
    with psycopg.connect(conninfo) as conn:
        for table, dump in dumps.items():
            with dump.open("wb") as fh, conn.cursor().copy(f"COPY {table} TO STDOUT (FORMAT binary)") as copy:
                for block in copy:
                    fh.write(block)
        conn.execute(f"TRUNCATE {', '.join(FLOOR_TABLES)} CASCADE")
        conn.commit()
        conn.execute("CHECKPOINT")
        cpu = _Cpu()
        start = time.perf_counter()
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit TO OFF")  # as ingest's batches do
            for table, dump in dumps.items():
                with dump.open("rb") as fh, conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy:
                    while block := fh.read(1 << 20):
                        copy.write(block)
        seconds = time.perf_counter() - start
        usage = cpu.per_banner(n)
    usage["cpu_us"]["process"] = None  # this process only waits
    return {"seconds": round(seconds, 2), "per_s": round(n / seconds), "peak_mb": None, **usage}  # the server's


class _Cpu:
    """CPU time spent since creation by this process's finished children and by the PostgreSQL
    server's processes on this machine (a finished backend's time is in the postmaster's
    cutime/cstime once reaped)."""

    def __init__(self) -> None:
        self.children = _children_cpu()
        self.server = _server_cpu()

    def per_banner(self, n: int) -> dict:
        server = _server_cpu()
        process = (_children_cpu() - self.children) / n * 1e6
        database = None if server is None or self.server is None else (server - self.server) / n * 1e6
        return {"cpu_us": {"process": round(process, 1), "database": None if database is None else round(database, 1)}}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu() -> float | None:
    """Seconds of CPU of every process named postgres, with their reaped children; None when the
    database is SQLite or the server's processes cannot be read (another machine)."""
    if connection.vendor != "postgresql":
        return None
    ticks = 0
    found = False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name, _, rest = text.partition(" (")[2].rpartition(") ")
        if name != "postgres":
            continue
        fields = rest.split()
        ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


def _manage(url: str, *args: str, wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "medexpo.settings"}
    proc = subprocess.Popen(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args], env=env, stdout=subprocess.PIPE
    )
    if wait:
        _wait(proc)
    return proc


def _wait(proc: subprocess.Popen) -> tuple[bytes, float]:
    """Wait for the process; return its output and its peak resident memory in MB.

    ru_maxrss would include the parent's memory at fork, so the child's own high-water mark
    (VmHWM, reset by exec) is sampled from /proc until it exits.
    """
    assert proc.stdout is not None, "started with stdout=PIPE"
    stdout = proc.stdout
    peak_kb = 0
    chunks = []
    os.set_blocking(stdout.fileno(), False)
    while proc.poll() is None:
        peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
        chunk = stdout.read()
        if chunk:
            chunks.append(chunk)
        time.sleep(0.02)
    rest = stdout.read()
    if rest:
        chunks.append(rest)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args!r} failed with exit code {proc.returncode}")
    return b"".join(chunks), peak_kb / 1024


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for text in fh:
                if text.startswith("VmHWM:"):
                    return int(text.split()[1])
    except OSError:
        pass
    return 0


class _scratch_database:  # noqa: N801 - used as a context manager
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.name = ""

    def __enter__(self) -> str:
        db = settings.DATABASES["default"]
        if connection.vendor != "postgresql":
            return f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        self.name = f"medexpo_bench_{uuid.uuid4().hex[:8]}"
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{self.name}"')
        return _postgres_url(db, self.name)

    def __exit__(self, *exc: object) -> None:
        if self.name:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _postgres_url(db: Mapping[str, Any], name: str) -> str:
    """The URL of database `name` on the configured server, with the configured credentials.

    Every part is percent-encoded: a "/", "#" or "?" left bare in a password makes the URL
    unreadable, and an "@host:port/db?" in it would lead the steps to another database.
    """
    user = quote(db["USER"] or "postgres", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db["HOST"] or "127.0.0.1"
    host = f"[{host}]" if ":" in host and not host.startswith("/") else quote(host, safe="")  # IPv6; socket folder
    return f"postgres://{user}{password}@{host}:{db['PORT'] or 5432}/{quote(name, safe='')}"
