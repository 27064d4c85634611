"""What every command shares, seen as a user sees it: a real `manage.py` process."""

import subprocess

import pytest

from medexpo.lib.commands import unapplied_migrations
from tests.harvest import processes


def manage(tmp_path, *args: str, close_stdout: bool = False) -> subprocess.CompletedProcess:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    proc = processes.manage(url, *args, env={"MEDEXPO_DATA_DIR": str(tmp_path / "data")})
    if close_stdout:  # a reader that went away before reading anything, as `| head -0` would
        proc.stdout.close()
        out, err = b"", proc.stderr.read()
        proc.wait(timeout=120)
    else:
        out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


@pytest.mark.parametrize(
    "args",
    [
        ("export_services",),
        ("harvest", "--file", "fixtures/sample/hosts.jsonl"),
        ("classify", "--all"),
        ("resolve_owners",),
        ("exposure_report", "--json"),
    ],
)
def test_a_database_not_yet_migrated_is_refused_with_the_command_to_run(tmp_path, args):
    done = manage(tmp_path, *args)

    assert done.returncode == 1
    assert "is not migrated" in done.stderr
    assert "run `manage.py migrate` first" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_database_that_cannot_be_reached_is_refused_with_the_reason_and_no_traceback(tmp_path):
    """A DATABASE_URL naming a database that does not exist, or a server that is down, ended every
    command in some 90 lines of traceback through psycopg and Django's migration loader."""
    url = "postgres://medexpo:secret@127.0.0.1:1/medexpo"  # nothing listens on port 1
    proc = processes.manage(url, "classify", env={"MEDEXPO_DATA_DIR": str(tmp_path / "data")})
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1
    assert err.decode().startswith("CommandError: cannot connect to the postgresql database medexpo: ")
    assert "Connection refused" in err.decode()
    assert "Traceback" not in err.decode() and "secret" not in err.decode()
    assert out == b""


def test_a_migrated_database_passes_and_a_reader_that_went_away_is_no_error(tmp_path):
    assert manage(tmp_path, "migrate", "-v0").returncode == 0

    done = manage(tmp_path, "classify", "--all", close_stdout=True)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
    assert "BrokenPipe" not in done.stderr


@pytest.mark.django_db
def test_the_test_database_has_every_migration():
    assert unapplied_migrations() == []


def test_a_run_that_could_not_start_writing_fails_the_command(tmp_path):
    """An error before the run began to write (here: its lock file cannot be opened, as a folder
    of that name beside the database makes it) was recorded nowhere, and the command printed
    the run as running and exited with 0: a script took the file for imported."""
    assert manage(tmp_path, "migrate", "-v0").returncode == 0
    (tmp_path / "db.sqlite3.harvest-lock").mkdir()

    for extra in ((), ("--json",)):
        done = manage(tmp_path, "harvest", "--hosts", "fixtures/sample/hosts.jsonl", *extra)

        assert done.returncode == 1
        assert "IsADirectoryError" in done.stderr and "Traceback" not in done.stderr
        assert "could not record" in done.stderr and "resume with --resume" in done.stderr
        assert done.stdout == ""


def test_the_demo_refuses_a_cache_lifetime_that_would_send_it_to_the_network(tmp_path) -> None:
    """With RDAP_CACHE_DAYS=0 the bundled answers expired as they were imported, and the demo,
    which promises no network, looked up every one of its 4,316 hosts at the registries."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    proc = processes.manage(url, "demo", env={"MEDEXPO_DATA_DIR": str(tmp_path / "data"), "RDAP_CACHE_DAYS": "0"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "RDAP_CACHE_DAYS=0" in err.decode() and "Traceback" not in err.decode()
    assert out == b""  # refused before the first step
