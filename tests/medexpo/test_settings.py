"""Production settings as a fresh process reads them from its environment."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

# Reading the settings is what these probes test: importing them alone takes a tenth of the time
# of django.setup(), which also loads every application (about 0.9 s a process on 2 cores).
LOAD_SETTINGS = "from django.conf import settings; settings.INSTALLED_APPS"
PROBE = (
    "import json; from django.conf import settings as s; "
    "print(json.dumps({'hosts': s.ALLOWED_HOSTS, 'origins': s.CSRF_TRUSTED_ORIGINS}))"
)


def settings_with(**env: str) -> dict:
    return json.loads(run_with([sys.executable, "-c", PROBE], **env).stdout)


def run_with(command: list[str], **env: str) -> subprocess.CompletedProcess:
    proc = start_with(command, **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def start_with(command: list[str], **env: str) -> subprocess.CompletedProcess:
    """`command` in a fresh process with production settings and `env`, whatever it exits with."""
    unset = {"DEBUG", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT"}
    unset |= {"SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD"}
    unset.add("DJANGO_ALLOW_ASYNC_UNSAFE")  # set by the browser tests in this process, never in production
    base = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "medexpo.settings", "SECRET_KEY": "k" * 50, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hosts_and_origins_may_be_written_with_spaces_after_the_commas() -> None:
    read = settings_with(
        ALLOWED_HOSTS="medexpo.example, admin.medexpo.example ,",
        CSRF_TRUSTED_ORIGINS=" https://medexpo.example,  https://admin.medexpo.example",
    )
    assert read["hosts"] == ["medexpo.example", "admin.medexpo.example"]
    assert read["origins"] == ["https://medexpo.example", "https://admin.medexpo.example"]


def test_hosts_set_but_empty_are_the_default_as_for_every_other_variable() -> None:
    """ALLOWED_HOSTS= (a blank line in an env file) allowed no host: every request got a 400."""
    assert settings_with(ALLOWED_HOSTS="")["hosts"] == ["localhost", "127.0.0.1", "[::1]"]
    assert settings_with(ALLOWED_HOSTS=" , ")["hosts"] == ["localhost", "127.0.0.1", "[::1]"]


def test_hsts_and_the_https_redirect_are_settings_that_the_deploy_check_sees() -> None:
    deploy = [sys.executable, "manage.py", "check", "--deploy"]
    plain = run_with(deploy).stderr
    assert "security.W004" in plain and "security.W008" in plain
    hardened = run_with(deploy, SECURE_HSTS_SECONDS="31536000", SECURE_SSL_REDIRECT="1").stderr
    assert "security.W004" not in hardened and "security.W008" not in hardened


def test_hsts_for_subdomains_and_preloading_can_be_set_so_that_the_deploy_check_has_nothing_left() -> None:
    """With HSTS on, the deploy check also asks for includeSubDomains and preload: with no
    variable for them, those two warnings could only be silenced, never answered."""
    deploy = [sys.executable, "manage.py", "check", "--deploy"]
    key = "medexpo-test-key-" + "0123456789abcdefghijklmnopqrstuvwxyz"  # long and varied enough for the check
    hsts = {"SECURE_HSTS_SECONDS": "31536000", "SECURE_SSL_REDIRECT": "1", "SECRET_KEY": key}
    assert "security.W005" in run_with(deploy, **hsts).stderr
    full = run_with(deploy, **hsts, SECURE_HSTS_INCLUDE_SUBDOMAINS="1", SECURE_HSTS_PRELOAD="1")
    assert "security.W" not in full.stderr
    assert "System check identified no issues" in full.stdout


def test_a_number_setting_that_is_not_a_number_is_refused_by_name() -> None:
    # int settings already named themselves; the float ones failed with a bare ValueError.
    for name in (
        "SHODAN_REQUEST_INTERVAL",
        "SHODAN_TIMEOUT",
        "SHODAN_BACKOFF",
        "RDAP_TIMEOUT",
        "RDAP_REQUESTS_PER_SECOND",
    ):
        proc = start_with([sys.executable, "-c", LOAD_SETTINGS], **{name: "30s"})
        assert proc.returncode != 0
        assert f"ImproperlyConfigured: {name} must be a number, got '30s'" in proc.stderr


def test_a_country_that_is_not_a_two_letter_code_is_refused_by_name() -> None:
    """Every query of a plan carries the country filter: a wrong code must stop the start, not a run."""
    probe = [
        sys.executable,
        "-c",
        "from django.conf import settings as s; print(s.MEDEXPO_COUNTRY)",
    ]
    for value, expected in (("NLD", None), ("N1", None), ("Ü1", None), (" de ", "DE"), ("", "NL")):
        proc = start_with(probe, MEDEXPO_COUNTRY=value)
        if expected is None:
            assert proc.returncode != 0
            assert f"MEDEXPO_COUNTRY must be a two-letter country code like NL, got {value!r}" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert proc.stdout.strip() == expected


def test_a_dns_server_that_is_not_an_address_and_port_is_refused_by_name() -> None:
    """A value without its port, or with a name, failed every owner look-up as unexpected_error."""
    probe = [
        sys.executable,
        "-c",
        "from django.conf import settings as s; print(s.RDAP_DNS_SERVER)",
    ]
    for value in ("127.0.0.1", "dns.example:53", "127.0.0.1:0", "127.0.0.1:99999", "::1:53", "127.0.0.1:x"):
        proc = start_with(probe, RDAP_DNS_SERVER=value)
        assert proc.returncode != 0, value
        assert "RDAP_DNS_SERVER must be an IP address and port like 192.0.2.53:53 or [2001:db8::53]:53" in proc.stderr
    for value, read in (("127.0.0.1:5353", "127.0.0.1:5353"), (" [::1]:53 ", "[::1]:53"), ("", "")):
        proc = start_with(probe, RDAP_DNS_SERVER=value)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == read


def test_a_number_setting_out_of_its_range_is_refused_by_name() -> None:
    """Taken as they were, these did harm without a word: a negative or NaN request interval sent
    requests without pacing, HARVEST_BATCH_SIZE=0 committed every banner on its own, a negative
    Q_WORKERS started no worker at all (and 0 one per core), a timeout of 0 failed every request."""
    for name, value, expected in (
        ("HARVEST_BATCH_SIZE", "0", "HARVEST_BATCH_SIZE must be at least 1, got '0'"),
        ("Q_WORKERS", "-1", "Q_WORKERS must be at least 1, got '-1'"),
        ("RDAP_CONCURRENCY", "0", "RDAP_CONCURRENCY must be at least 1, got '0'"),
        ("RDAP_CACHE_DAYS", "-30", "RDAP_CACHE_DAYS must be at least 0, got '-30'"),
        ("SHODAN_MAX_RETRIES", "-1", "SHODAN_MAX_RETRIES must be at least 0, got '-1'"),
        ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS must be at least 0, got '-1'"),
        ("SHODAN_REQUEST_INTERVAL", "-1", "SHODAN_REQUEST_INTERVAL must be at least 0, got '-1'"),
        ("SHODAN_REQUEST_INTERVAL", "nan", "SHODAN_REQUEST_INTERVAL must be a number, got 'nan'"),
        ("SHODAN_BACKOFF", "inf", "SHODAN_BACKOFF must be a number, got 'inf'"),
        ("RDAP_REQUESTS_PER_SECOND", "-1", "RDAP_REQUESTS_PER_SECOND must be at least 0, got '-1'"),
        ("SHODAN_TIMEOUT", "0", "SHODAN_TIMEOUT must be more than 0, got '0'"),
        ("RDAP_TIMEOUT", "-5", "RDAP_TIMEOUT must be more than 0, got '-5'"),
        ("MEDEXPO_HARVEST_MAX_CREDITS", "-5", "MEDEXPO_HARVEST_MAX_CREDITS must be at least 1, got '-5'"),
    ):
        proc = start_with([sys.executable, "-c", LOAD_SETTINGS], **{name: value})
        assert proc.returncode != 0, name
        assert f"ImproperlyConfigured: {expected}" in proc.stderr, proc.stderr[-500:]


def test_numbers_in_range_are_read() -> None:
    probe = (
        "from django.conf import settings as s; "
        "print(s.HARVEST_BATCH_SIZE, s.RDAP_REQUESTS_PER_SECOND, s.SHODAN_REQUEST_INTERVAL, s.Q_CLUSTER['workers'])"
    )
    proc = run_with(
        [sys.executable, "-c", probe],
        HARVEST_BATCH_SIZE="1",
        RDAP_REQUESTS_PER_SECOND="0",
        SHODAN_REQUEST_INTERVAL="0.5",
        Q_WORKERS=" 3 ",
    )
    assert proc.stdout.split() == ["1", "0.0", "0.5", "3"]


def test_a_secret_file_that_is_empty_is_refused_by_name(tmp_path) -> None:
    """An empty SHODAN_API_KEY_FILE (a secret not yet filled in, a mount gone wrong) read as no
    key: setup_schedules then removed the weekly harvest and said only "no SHODAN_API_KEY"."""
    empty = tmp_path / "key"
    empty.write_text(" \n")
    for name in ("SHODAN_API_KEY", "SECRET_KEY"):
        proc = start_with([sys.executable, "-c", LOAD_SETTINGS], **{f"{name}_FILE": str(empty)})
        assert proc.returncode != 0, name
        assert f"ImproperlyConfigured: {name}_FILE names an empty file: {empty}" in proc.stderr, proc.stderr[-500:]


def test_a_secret_is_read_from_its_file_without_the_line_break(tmp_path) -> None:
    key = tmp_path / "key"
    key.write_text("abc123\n")
    probe = "from django.conf import settings as s; print(repr(s.SHODAN_API_KEY))"
    proc = run_with([sys.executable, "-c", probe], SHODAN_API_KEY_FILE=str(key))
    assert proc.stdout.strip() == "'abc123'"


def test_log_level_is_read_in_any_case_and_a_wrong_one_is_refused_by_name() -> None:
    """LOG_LEVEL=info stopped every start with "ValueError: Unable to configure root logger",
    a traceback that named neither the variable nor the value."""
    probe = "import django, logging; django.setup(); print(logging.getLevelName(logging.getLogger().level))"
    assert run_with([sys.executable, "-c", probe], LOG_LEVEL="info").stdout.strip() == "INFO"
    assert run_with([sys.executable, "-c", probe], LOG_LEVEL="").stdout.strip() == "WARNING"

    proc = start_with([sys.executable, "-c", probe], LOG_LEVEL="verbose")
    assert proc.returncode != 0
    assert "ImproperlyConfigured: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'verbose'" in (
        proc.stderr
    )


def test_a_database_url_that_names_no_usable_database_is_refused_by_name(tmp_path) -> None:
    """Each of these was read as something else without a word: `sqlite://data/x.db` as the
    file x.db in the working directory (the host part dropped), `sqlite:///` (a path variable
    left empty) as a database in memory, gone when the process ends, a relative path as another
    database in each working directory (the worker's and the command line's); a typo in the
    scheme or an unquoted '/' in a password stopped the start with a traceback that did not say
    which variable was wrong."""
    for url, expected in (
        ("sqlite://data/x.db", "DATABASE_URL must name the SQLite file by its absolute path"),
        ("sqlite:///", "DATABASE_URL must name the SQLite file by its absolute path"),
        ("sqlite://", "DATABASE_URL must name the SQLite file by its absolute path"),
        ("sqlite:///data/x.db", "DATABASE_URL must name the SQLite file by its absolute path"),
        ("postgres://u@127.0.0.1:5432", "DATABASE_URL names no database"),
        ("postgress://u@127.0.0.1/medexpo", "DATABASE_URL is not a database URL that medexpo can use"),
        ("postgres://u:pa/ss@127.0.0.1/medexpo", "DATABASE_URL is not a database URL that medexpo can use"),
    ):
        proc = start_with([sys.executable, "-c", LOAD_SETTINGS], DATABASE_URL=url)
        assert proc.returncode != 0, url
        assert f"ImproperlyConfigured: {expected}" in proc.stderr, (url, proc.stderr[-800:])
        assert "pa/ss" not in proc.stderr  # the URL may hold a password: it is never quoted

    probe = "import django; django.setup(); from django.db import connection; print(connection.settings_dict['NAME'])"
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    assert run_with([sys.executable, "-c", probe], DATABASE_URL=url).stdout.strip() == str(tmp_path / "db.sqlite3")


def test_a_redis_url_that_is_no_redis_url_is_refused_by_name_without_quoting_it() -> None:
    """`redis//host` (a colon lost) started, and qcluster then failed with a redis traceback at
    its first connection; the URL may hold a password, so the message does not quote it."""
    probe = "from django.conf import settings as s; print(s.Q_CLUSTER['redis'])"
    good = "redis://:pw@127.0.0.1:6379/0"
    assert run_with([sys.executable, "-c", probe], REDIS_URL=good).stdout.strip() == good

    for bad in ("redis//:secret@127.0.0.1:6379", "http://:secret@127.0.0.1:6379", "redis://:secret@127.0.0.1:63a9"):
        proc = start_with([sys.executable, "-c", probe], REDIS_URL=bad)
        assert proc.returncode != 0, bad
        assert "ImproperlyConfigured: REDIS_URL is not a Redis URL" in proc.stderr, proc.stderr[-500:]
        assert "secret" not in proc.stderr


def test_the_embedded_sqlite_database_is_readable_by_its_owner_alone(tmp_path) -> None:
    """It holds what the report files keep owner-only (exposed systems, contacts) and staff's
    password hashes; created with the umask's 0644 it was readable by every user of the machine."""
    probe = (
        "import os; os.umask(0o022); import django; django.setup(); from django.db import connection; "
        "cursor = connection.cursor(); cursor.execute('create table t (x int)'); "
        "name = connection.settings_dict['NAME']; "
        # the -wal file exists while a connection is open: its mode is read before this one closes
        "print(*(oct(os.stat(path).st_mode & 0o777) for path in (name, name + '-wal')))"
    )
    modes = run_with([sys.executable, "-c", probe], DATABASE_URL="", MEDEXPO_DATA_DIR=str(tmp_path / "data")).stdout
    assert (tmp_path / "data" / "medexpo.sqlite3").exists()
    assert modes.split() == ["0o600", "0o600"]


def test_the_debug_error_page_hides_passwords_in_urls() -> None:
    # Django hides settings named like KEY or PASS; REDIS_URL and Q_CLUSTER["redis"] were shown whole,
    # and so was the environment runserver copies into each request (DATABASE_URL here).
    probe = (
        "import sys, django; django.setup(); from django.test import RequestFactory; "
        "from django.views.debug import technical_500_response as page\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n"
        "    request = RequestFactory().get('/', DATABASE_URL='postgres://u:pw2secret@db/x')\n"
        "    print(page(request, *sys.exc_info()).content.decode())"
    )
    shown = run_with(
        [sys.executable, "-c", probe], DEBUG="1", REDIS_URL="redis://:hunter2secret@127.0.0.1:6379/3"
    ).stdout
    assert "ZeroDivisionError" in shown and "Q_CLUSTER" in shown and "REDIS_URL" in shown
    assert "hunter2secret" not in shown and "pw2secret" not in shown


def test_a_refused_setting_stops_a_command_with_its_message_and_no_traceback() -> None:
    """The refusal named the variable, but at the end of some 50 lines of traceback through
    Django's startup, which an operator reads as a crash of the program."""
    for command in (["check"], ["harvest", "--file", "x.json"], ["qcluster"]):
        proc = start_with([sys.executable, "manage.py", *command], HARVEST_BATCH_SIZE="0")
        assert proc.returncode == 1, command
        assert proc.stderr == "ImproperlyConfigured: HARVEST_BATCH_SIZE must be at least 1, got '0'\n", command
        assert proc.stdout == ""


def test_a_data_dir_where_no_database_can_be_made_is_refused_by_name(tmp_path) -> None:
    """A MEDEXPO_DATA_DIR under a file (or a path nobody may write) stopped the start with a bare
    FileNotFoundError or NotADirectoryError traceback that named neither variable."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    probe = [sys.executable, "-c", LOAD_SETTINGS]
    proc = start_with(probe, DATABASE_URL="", MEDEXPO_DATA_DIR=str(blocker / "data"))
    assert proc.returncode != 0
    assert f"ImproperlyConfigured: MEDEXPO_DATA_DIR: cannot create the SQLite database {blocker}/data" in proc.stderr

    proc = start_with(probe, DATABASE_URL=f"sqlite:///{blocker}/db.sqlite3")
    assert proc.returncode != 0
    assert f"ImproperlyConfigured: DATABASE_URL: cannot create the SQLite database {blocker}/db.sqlite3" in proc.stderr


def test_a_server_address_the_clients_cannot_use_is_refused_by_name() -> None:
    """Taken as they were, each failed every lookup or request later, under a name that hid the
    setting: RDAP_DNS_SERVER=127.0.0.1 (no port) as 'unexpected_error' (a fault of ours) for every
    host, RDAP_BASE_URL=127.0.0.1:9 (no scheme) as 'lookup_failed' naming ARIN's own URL, and
    SHODAN_API_URL=127.0.0.1:9 as 'connection to Shodan failed (InvalidSchema)' after the retries."""
    probe = "from django.conf import settings as s; print(repr((s.RDAP_DNS_SERVER, s.RDAP_BASE_URL, s.SHODAN_API_URL)))"
    for name, value, expected in (
        ("RDAP_DNS_SERVER", "127.0.0.1", "RDAP_DNS_SERVER must be an IP address and port"),
        ("RDAP_DNS_SERVER", "::1:53", "RDAP_DNS_SERVER must be an IP address and port"),
        ("RDAP_DNS_SERVER", "127.0.0.1:dns", "RDAP_DNS_SERVER must be an IP address and port"),
        ("RDAP_DNS_SERVER", "127.0.0.1:70000", "RDAP_DNS_SERVER must be an IP address and port"),
        ("RDAP_BASE_URL", "127.0.0.1:9", "RDAP_BASE_URL must be an http:// or https:// URL with a host"),
        ("SHODAN_API_URL", "ftp://u:secret@127.0.0.1", "SHODAN_API_URL must be an http:// or https:// URL with a host"),
        ("SHODAN_API_URL", "https://", "SHODAN_API_URL must be an http:// or https:// URL with a host"),
        ("SHODAN_API_URL", "http://127.0.0.1:port", "SHODAN_API_URL must be an http:// or https:// URL with a host"),
    ):
        proc = start_with([sys.executable, "-c", probe], **{name: value})
        assert proc.returncode != 0, (name, value)
        assert f"ImproperlyConfigured: {expected}" in proc.stderr, proc.stderr[-500:]
        if name != "RDAP_DNS_SERVER":
            assert "secret" not in proc.stderr  # a proxy's URL may hold a password: it is not quoted
        else:
            assert f"got {value!r}" in proc.stderr

    read = run_with(
        [sys.executable, "-c", probe],
        RDAP_DNS_SERVER="[::1]:5353",
        RDAP_BASE_URL="http://127.0.0.1:9/",
        SHODAN_API_URL=" https://shodan-proxy.example/api ",
    )
    assert read.stdout.strip() == repr(("[::1]:5353", "http://127.0.0.1:9/", "https://shodan-proxy.example/api"))
    empty = run_with([sys.executable, "-c", probe], RDAP_DNS_SERVER="", RDAP_BASE_URL="", SHODAN_API_URL="")
    assert empty.stdout.strip() == repr(("", "", ""))
