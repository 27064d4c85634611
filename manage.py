#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medexpo.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        # The reader of the output went away (`| head`): stop quietly, as other Unix tools do. The
        # output still buffered would fail again at exit, so it goes to /dev/null instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except ImproperlyConfigured as exc:
        if settings.configured:
            raise
        # The settings refused the environment: the message names the variable and what it
        # takes, and a traceback through Django's startup would read as a crash.
        sys.exit(f"ImproperlyConfigured: {exc}")


if __name__ == "__main__":
    main()
