"""Sizes on the command line: ``32768``, ``64k``, ``128K``, ``1m``, ``0.5k``.

Suffixes are binary multiples (k = 1024, m = 1024**2, g = 1024**3), case-insensitive. A fraction is
allowed only when the result is a whole number (``0.5k`` = 512, ``0.3k`` is an error). Sizes must be
positive.
"""

from __future__ import annotations

import argparse
import re
from decimal import Decimal, InvalidOperation

__all__ = ["SIZE_UNITS", "argparse_size", "format_size", "parse_size"]

SIZE_UNITS: dict[str, int] = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

_SIZE_RE = re.compile(r"(?P<num>\d+(?:_\d+)*(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmg]?)", re.IGNORECASE)
_EXAMPLES = "e.g. 32768, 64k, 1m"


def parse_size(text: str) -> int:
    """Parse a size such as ``"64k"`` (65536), ``"32768"``, ``"1m"`` (1048576) or ``"0.5k"`` (512).

    Raises ``ValueError`` with a message quoting ``text`` for anything else: an empty or malformed
    string, an unknown suffix, zero, a negative size, or a fraction that is not a whole number.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_size() expects a str, got {type(text).__name__}")
    s = text.strip()
    if s.startswith("-"):
        raise ValueError(f"invalid size {text!r}: must be positive")
    m = _SIZE_RE.fullmatch(s[1:] if s.startswith("+") else s)
    if not m:
        raise ValueError(
            f"invalid size {text!r}: expected a positive whole number with an optional k/m/g suffix ({_EXAMPLES})"
        )
    try:
        value = Decimal(m.group("num").replace("_", "")) * SIZE_UNITS[m.group("unit").lower()]
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"invalid size {text!r}: not a number ({_EXAMPLES})") from None
    if value != value.to_integral_value():
        raise ValueError(f"invalid size {text!r}: {value.normalize():f} is not a whole number")
    n = int(value)
    if n <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return n


def argparse_size(text: str) -> int:
    """:func:`parse_size` for ``argparse``'s ``type=``: errors become ``ArgumentTypeError``."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def format_size(n: int) -> str:
    """Shortest exact spelling of ``n`` that :func:`parse_size` reads back: 65536 -> ``"64k"``.

    Uses the largest suffix that divides ``n`` exactly (``1536`` stays ``"1536"``).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"format_size() expects an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"format_size() expects a non-negative size, got {n}")
    for unit in ("g", "m", "k"):
        mult = SIZE_UNITS[unit]
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)
