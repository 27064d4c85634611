"""bench_ingest's scratch database: the steps it runs must reach that database and no other."""

from __future__ import annotations

import json
from pathlib import Path

import dj_database_url
import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from harvest.management.commands.bench_ingest import _scratch_database, bench_sizes


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("password", ["p/ss+word", "a#b?c", "x@{host}:{port}/{name}?"])
def test_it_points_the_steps_at_the_scratch_database_whatever_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, password: str
) -> None:
    if connection.vendor != "postgresql":
        # On SQLite the steps get a file in the benchmark's temporary folder, whatever is configured.
        with _scratch_database(tmp_path) as url:
            assert url == f"sqlite:///{tmp_path / 'bench.sqlite3'}"
        return
    configured = settings.DATABASES["default"]
    # The last password spells out the configured database: an unescaped URL would lead there.
    password = password.format(host=configured["HOST"], port=configured["PORT"] or 5432, name=configured["NAME"])
    monkeypatch.setitem(configured, "PASSWORD", password)
    scratch = _scratch_database(tmp_path)
    with scratch as url:
        parsed = dj_database_url.parse(url)  # as the steps' `manage.py` processes read DATABASE_URL
        assert (parsed["NAME"], parsed["PASSWORD"]) == (scratch.name, password)
        assert parsed["HOST"] == (configured["HOST"] or "127.0.0.1")
        with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as conn:  # as the floor step does
            assert conn.execute("SELECT current_database()").fetchone() == (scratch.name,)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [scratch.name])
        assert cursor.fetchone() == (0,)


def test_it_runs_the_sizes_smallest_first() -> None:
    # "Peak memory at the largest size vs the smallest" divides the last run by the first.
    assert bench_sizes([2_000_000, 5_000, 5_000], million=True) == [5_000, 1_000_000, 2_000_000]
    assert bench_sizes(None, million=False) == [200_000]


def test_it_refuses_an_empty_run() -> None:
    with pytest.raises(CommandError, match="at least 1"):
        call_command("bench_ingest", "--banners", "0", "--json")


@pytest.mark.django_db(transaction=True)
def test_a_small_run_measures_every_step_against_the_baseline(capsys: pytest.CaptureFixture) -> None:
    call_command("bench_ingest", "--banners", "300", "--json")
    run = json.loads(capsys.readouterr().out)["runs"][0]
    steps = ["baseline_json", "validate", "ingest", "reingest"] + (
        ["floor"] if connection.vendor == "postgresql" else []
    )
    assert sorted(k for k, v in run.items() if isinstance(v, dict) and "vs_baseline" in v) == sorted(steps)
    for name in steps:
        step = run[name]
        assert step["per_s"] > 0 and step["vs_baseline"] == round(run["baseline"]["per_s"] / step["per_s"], 2)
    assert run["banners"] == 300 and run["ingest"]["peak_mb"] > run["baseline"]["peak_mb"]
