"""argparse value types shared by sqsam's subcommands (each raises ``argparse.ArgumentTypeError``)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """``"3"`` -> 3; anything that is not an integer >= 1 is an argparse error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def probability(text: str) -> float:
    """``"0.5"`` -> 0.5; anything outside [0, 1] is an argparse error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value
