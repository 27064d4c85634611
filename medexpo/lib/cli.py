"""Argument types for management commands."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """An int of 1 or more (argparse type): a batch of 0 or fewer would do nothing, or fail late."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number
