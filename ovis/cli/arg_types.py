"""argparse types shared by the commands: a bad number is refused by the parser, naming the value."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1 (0 or less would run nothing, or silently differ)."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a count that may be none)."""
    value = _int(text, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {value}")
    return value


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
