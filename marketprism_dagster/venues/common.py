"""Small pure helpers shared by the venue modules: exact decimal strings, periods, symbol names.

Nothing here knows the adapter contract (``base`` builds on this module, never the reverse)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

PERIOD_SECONDS: dict[str, int] = {
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "12h": 43200,
    "1d": 86400,
}
LSR_LIMIT = 3  # long/short ratio points per poll; JetStream dedup drops the repeats


def decimal_str(value: Any) -> str:
    """A plain decimal string for a venue number: strings kept as sent when already plain,
    exponent forms ("1e-05") and JSON numbers (Deribit) rewritten exactly; never via float
    arithmetic. Raises ValueError on anything that is not a finite number."""
    if isinstance(value, str):
        if value and "e" not in value and "E" not in value and value.lstrip("-").replace(".", "", 1).isdigit():
            return value
        text = value
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"not a number: {value!r}")
    else:
        text = repr(value)  # ints, and floats only from JSON text (shortest round-trip repr)
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return format(d, "f")


def scale(qty: str, factor: Decimal | None) -> str:
    """``qty * factor`` exactly (contracts -> base units), as a plain decimal string."""
    if factor is None:
        return qty
    out = format(Decimal(qty) * factor, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".") or "0"
    return out


def loads_exact(raw: bytes | str) -> Any:
    """JSON with floats kept as their decimal text (for venues that send JSON numbers)."""
    return json.loads(raw, parse_float=decimal_str)


# a name that goes into NATS subjects and identities: no separators, wildcards or spaces
_NAME_FORBIDDEN = frozenset(". *>\t\r\n\x00")
ENTRY_ERRORS = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)  # one malformed listing entry


def is_name(value: Any) -> bool:
    """A venue's symbol or asset name we can use: a non-empty string of at most 64 characters, no NATS
    subject separator, wildcard or whitespace."""
    return type(value) is str and 0 < len(value) <= 64 and _NAME_FORBIDDEN.isdisjoint(value)


def name_of(value: Any, key: str) -> str:
    """``value[key]`` when it is a usable name (``is_name``), else ValueError naming the key and value."""
    name = value[key]
    if not is_name(name):
        raise ValueError(f"{key} {name!r} is not a symbol name")
    return name  # type: ignore[no-any-return]


def entry_label(entry: Any, *keys: str) -> str:
    """A short label for a listing entry in a log line (its name if it has one)."""
    if isinstance(entry, dict):
        for k in keys:
            v = entry.get(k)
            if isinstance(v, str):
                return v[:64]
    return type(entry).__name__


def period_ms(period: str) -> int:
    return PERIOD_SECONDS[period] * 1000
