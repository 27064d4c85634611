"""Production settings as a fresh process reads them from its environment."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'hosts': s.ALLOWED_HOSTS, 'origins': s.CSRF_TRUSTED_ORIGINS}))"
)


def settings_with(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"}}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "medexpo.settings", "SECRET_KEY": "k" * 50, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_hosts_and_origins_may_be_written_with_spaces_after_the_commas() -> None:
    read = settings_with(
        ALLOWED_HOSTS="medexpo.example, admin.medexpo.example ,",
        CSRF_TRUSTED_ORIGINS=" https://medexpo.example,  https://admin.medexpo.example",
    )
    assert read["hosts"] == ["medexpo.example", "admin.medexpo.example"]
    assert read["origins"] == ["https://medexpo.example", "https://admin.medexpo.example"]
