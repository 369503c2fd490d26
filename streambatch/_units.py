"""Parsing of user-facing quantities (byte sizes)."""

from __future__ import annotations

import re

__all__ = ["parse_bytes"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str, name: str = "memory_limit") -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GB"``, ``"1.5 GiB"``.

    >>> parse_bytes("256MiB")
    268435456
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a byte count or a string like '512MiB', got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must be a byte count or a string like '512MiB' or '2GB', got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ValueError(f"{name} must be a byte count or a string like '512MiB', got {value!r}")
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return result


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``, for messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
