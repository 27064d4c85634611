"""Test settings: the same as production except what makes tests fast and synchronous."""

import os

os.environ.setdefault("DEBUG", "1")

from medexpo.settings import *  # noqa: E402,F403
from medexpo.settings import Q_CLUSTER  # noqa: E402

Q_CLUSTER["sync"] = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SHODAN_REQUEST_INTERVAL = 0.0
