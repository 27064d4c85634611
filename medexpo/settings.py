"""medexpo settings. Everything that differs between deployments comes from the environment."""

import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
_Number = TypeVar("_Number", int, float)


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    return _envnumber(name, default, int, "an integer", minimum=minimum)


def envdnsserver(name: str) -> str:
    """An IP address and port ("192.0.2.53:53", "[2001:db8::53]:53"), or empty. The DNS client
    takes addresses only; a value it cannot use failed every owner look-up, not the start."""
    value = os.environ.get(name, "").strip()
    if not value:
        return ""
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
        valid = (address.version == 6) == bracketed and port.isascii() and port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        valid = False
    if not valid:
        raise ImproperlyConfigured(
            f"{name} must be an IP address and port like 192.0.2.53:53 or [2001:db8::53]:53, got {value!r}"
        )
    return value


def envfloat(name: str, default: float, *, minimum: float | None = None, above: float | None = None) -> float:
    """`minimum` allows that value; `above` does not (a timeout of 0 is no timeout)."""
    return _envnumber(name, float(default), float, "a number", minimum=minimum, above=above)


def _envnumber(
    name: str,
    default: _Number,
    kind: Callable[[str], _Number],
    what: str,
    *,
    minimum: _Number | None = None,
    above: _Number | None = None,
) -> _Number:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = kind(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be {what}, got {value!r}") from exc
    # float() reads "nan" and "inf": NaN compares false with everything (an interval of NaN
    # never waits), and an infinite delay cannot be slept.
    if not math.isfinite(number):
        raise ImproperlyConfigured(f"{name} must be {what}, got {value!r}")
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum:g}, got {value!r}")
    if above is not None and number <= above:
        raise ImproperlyConfigured(f"{name} must be more than {above:g}, got {value!r}")
    return number


def envlist(name: str, default: str = "") -> list[str]:
    """A comma-separated list; spaces around the items are dropped ("a.example, b.example"). Set
    but empty (a blank line in an env file), it is the default, as every other variable is."""
    return _items(os.environ.get(name, "")) or _items(default)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def envsecret(name: str, default: str = "") -> str:
    """Read a secret from NAME, or from the file named by NAME_FILE (Docker/systemd credentials)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            secret = Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE points to an unreadable file: {exc}") from exc
        # Named but empty is a mistake (a secret not filled in), not "no secret": taken as none,
        # an empty Shodan key file quietly removed the scheduled harvest.
        if not secret:
            raise ImproperlyConfigured(f"{name}_FILE names an empty file: {path}")
        return secret
    return os.environ.get(name, default)


def envurl(name: str) -> str:
    """The http(s) URL of a server, or "" when not set. Not quoted when refused: it may hold a password."""
    value = os.environ.get(name, "").strip()
    if not value:
        return ""
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018 - reading it checks it (a port that is no number)
    except ValueError:
        parts = parts._replace(scheme="")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ImproperlyConfigured(f"{name} must be an http:// or https:// URL with a host")
    return value


DEBUG = envbool("DEBUG", False)
DATA_DIR = Path(os.environ.get("MEDEXPO_DATA_DIR") or BASE_DIR / "data")

SECRET_KEY = envsecret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY (or SECRET_KEY_FILE) in production, "
            "or DEBUG=1 for a development machine."
        )
    SECRET_KEY = "medexpo-development-only-insecure-key"  # noqa: S105 - DEBUG only

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "simple_history",
    "harvest",
    "disclosure",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "medexpo.lib.middleware.refuse_nul_in_query",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
]

ROOT_URLCONF = "medexpo.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "medexpo.wsgi.application"


def database_from_url(url: str) -> dict:
    """DATABASE_URL read, or refused with a message that never quotes it (it may hold a password)."""
    try:
        database = dict(dj_database_url.parse(url, conn_max_age=60))
    except ValueError:  # an unknown scheme, or a part that needs quoting (a '/' in a password)
        scheme = url.partition("://")[0] if re.fullmatch(r"[A-Za-z][\w+.-]{0,19}://.*", url, re.DOTALL) else ""
        raise ImproperlyConfigured(
            f"DATABASE_URL is not a database URL that medexpo can use (scheme {scheme or 'missing'!r}); it takes "
            "postgres://USER:PASSWORD@HOST:PORT/NAME, special characters in the password %-quoted, "
            "or sqlite:////absolute/path/file.sqlite3"
        ) from None
    if database["ENGINE"] == "django.db.backends.sqlite3":
        # dj_database_url drops a host part (sqlite://data/x.db is x.db), takes sqlite:/// for a
        # database in memory, and a relative path is another database in each working directory.
        name, netloc = str(database.get("NAME") or ""), url.partition("://")[2].partition("/")[0]
        if netloc or not Path(name).is_absolute():
            raise ImproperlyConfigured(
                "DATABASE_URL must name the SQLite file by its absolute path: sqlite:////path/to/file.sqlite3"
            )
    elif not database.get("NAME"):
        raise ImproperlyConfigured("DATABASE_URL names no database: add /NAME at its end")
    return database


_default_db = f"sqlite:///{DATA_DIR / 'medexpo.sqlite3'}"
DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL") or _default_db)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _sqlite_file = Path(DATABASES["default"]["NAME"])
    try:
        _sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        # SQLite creates a database (and its -wal and -shm files, which copy its mode) with the
        # umask's 0644: every user of the machine could read the exposed systems and contacts that
        # the report files keep owner-only, and staff's password hashes. An empty file is an empty
        # database.
        _sqlite_file.touch(mode=0o600, exist_ok=True)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{'DATABASE_URL' if os.environ.get('DATABASE_URL') else 'MEDEXPO_DATA_DIR'}: cannot create the "
            f"SQLite database {_sqlite_file}: {exc.strerror}"
        ) from None
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the admin read while a harvest writes; IMMEDIATE avoids lock-upgrade deadlocks.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Off unless asked for: the TLS proxy in front may already send HSTS and redirect to HTTPS.
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
    # Off unless asked for: a browser keeps them for SECURE_HSTS_SECONDS (preloading, for good).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)

# --- medexpo -----------------------------------------------------------------------------

# Shodan. The key is a secret: it is read here and never logged.
SHODAN_API_KEY = envsecret("SHODAN_API_KEY")
SHODAN_API_URL = envurl("SHODAN_API_URL")  # empty: the shodan package's default
SHODAN_REQUEST_INTERVAL = envfloat("SHODAN_REQUEST_INTERVAL", 1.0, minimum=0)  # 1 request/s
SHODAN_TIMEOUT = envfloat("SHODAN_TIMEOUT", 30, above=0)
SHODAN_MAX_RETRIES = envint("SHODAN_MAX_RETRIES", 5, minimum=0)
SHODAN_BACKOFF = envfloat("SHODAN_BACKOFF", 1.0, minimum=0)  # first retry delay in seconds, then doubling
MEDEXPO_COUNTRY = (os.environ.get("MEDEXPO_COUNTRY") or "NL").strip().upper()
if not (len(MEDEXPO_COUNTRY) == 2 and MEDEXPO_COUNTRY.isascii() and MEDEXPO_COUNTRY.isalpha()):
    raise ImproperlyConfigured(
        f"MEDEXPO_COUNTRY must be a two-letter country code like NL, got {os.environ['MEDEXPO_COUNTRY']!r}"
    )
# The scheduled weekly harvest (manage.py setup_schedules): which plan, and its credit cap per run.
MEDEXPO_HARVEST_PLAN = os.environ.get("MEDEXPO_HARVEST_PLAN", "medical")
MEDEXPO_HARVEST_MAX_CREDITS = envint("MEDEXPO_HARVEST_MAX_CREDITS", 100, minimum=1)

# Ingest batch size: a checkpoint is written after every batch.
HARVEST_BATCH_SIZE = envint("HARVEST_BATCH_SIZE", 2000, minimum=1)

# Owners (RDAP/ASN through ipwhois). RDAP_BASE_URL sends every registry request to one server
# (a mirror, or the stand-in in tests); empty means the registries themselves.
RDAP_BASE_URL = envurl("RDAP_BASE_URL")
RDAP_DNS_SERVER = envdnsserver("RDAP_DNS_SERVER")  # "address:port" for the ASN step; empty: system
RDAP_TIMEOUT = envfloat("RDAP_TIMEOUT", 10, above=0)
RDAP_CACHE_DAYS = envint("RDAP_CACHE_DAYS", 30, minimum=0)
RDAP_REQUESTS_PER_SECOND = envfloat("RDAP_REQUESTS_PER_SECOND", 1.0, minimum=0)  # per registry; 0: no limit
RDAP_CONCURRENCY = envint("RDAP_CONCURRENCY", 4, minimum=1)

# The DEBUG error page and error mails leave out URLs with credentials (REDIS_URL), not only *KEY*, *PASS*.
DEFAULT_EXCEPTION_REPORTER_FILTER = "medexpo.lib.debug.SettingsFilter"

# Background work: the ORM broker on a single machine, Redis when REDIS_URL is set.
REDIS_URL = os.environ.get("REDIS_URL", "")
Q_CLUSTER = {
    "name": "medexpo",
    "workers": envint("Q_WORKERS", 2, minimum=1),
    "timeout": 3600,
    "retry": 3900,  # must exceed timeout
    "max_attempts": 3,
    "catch_up": False,
}
if REDIS_URL:
    from redis.connection import parse_url

    try:
        parse_url(REDIS_URL)  # reads it only; a bad one otherwise fails qcluster's first connection
    except ValueError:
        raise ImproperlyConfigured(
            "REDIS_URL is not a Redis URL: it takes redis://[:PASSWORD@]HOST:PORT/DB, rediss://... or "
            "unix:///path/to/socket"  # not quoted: it may hold a password
        ) from None
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# logging knows only upper-case names; a wrong one failed the start as "Unable to configure root logger".
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL = (os.environ.get("LOG_LEVEL") or "WARNING").strip().upper()
if LOG_LEVEL not in LOG_LEVELS:
    raise ImproperlyConfigured(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {os.environ['LOG_LEVEL']!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
