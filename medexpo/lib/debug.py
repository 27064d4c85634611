"""What Django's error pages and reports show of the settings."""

from typing import Any

from django.views.debug import SafeExceptionReporterFilter


class SettingsFilter(SafeExceptionReporterFilter):
    """Django hides settings named like KEY or PASS; this also hides any URL that carries a user or
    password (REDIS_URL, Q_CLUSTER's broker), whatever its setting is called."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        if isinstance(value, str) and "://" in value and "@" in value:
            return self.cleansed_substitute
        return value
