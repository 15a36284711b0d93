"""What a storable record is: the semantic rules of every record type, in one place.

The collector checks every record an adapter produced before it publishes it (a failure is
counted as ``invalid_record`` with its rule and never published); the writer checks every
decoded message before it inserts it (a failure is dead-lettered with the rule). The order
book engine uses the same decimal rule for every level it takes (a bad level drops the book
and resynchronizes it, see ``book.levels``).

Rules
-----
* every decimal is a PLAIN decimal string: ASCII digits with at most one point, an optional
  leading ``-`` only where the column is signed (funding rates), no exponent, no spaces, no
  ``Infinity``/``NaN``; it fits ``Decimal(38, 18)`` exactly: at most 20 integer digits and at
  most 18 significant fractional digits (Arrow's string -> decimal128 cast would silently wrap
  ``1e30`` into 18960114910927365649.47..., and reject more fractional digits);
* prices and sizes are positive (trade, liquidation, every order book level); open interest,
  volatility values and the long/short ratio are non-negative; the long/short ratio has no
  upper bound (longs / shorts), while ``long_ratio`` and ``short_ratio`` are SHARES (the long
  and short fractions of accounts or positions) in 0..1; a funding rate
  is signed with ``|rate| <= 1``;
* a ``source_gap`` names a declared data type, one of ``records.GAP_CAUSES`` and ``GAP_STATES``;
* ``side`` is ``buy`` or ``sell``; ``trade_id``, ``exchange``, ``market_type``, ``symbol``,
  ``exchange_symbol`` and ``period`` are non-empty;
* times are integer milliseconds in [2000-01-01, 2200-01-01); ``update_id`` and ``depth`` fit
  UInt64;
* an order book has at most ``depth`` levels per side, bids strictly descending, asks strictly
  ascending, every quantity positive (a zero deletes a level inside the book and is never
  published) and is not crossed (best bid < best ask).

A sign on an unsigned value is malformed even when the value is zero ("-0"): the venues document
unsigned decimal strings for prices and sizes, so a sign means the message is not what we read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from itertools import islice
from operator import gt, itemgetter, lt, methodcaller
from typing import Any, Final

import msgspec
from msgspec.structs import astuple

from marketprism_dagster.records import BOOK_TYPES, GAP_CAUSES, GAP_STATES, RECORD_TYPES, Wire, data_type_of

# Event and receive times outside [2000-01-01, 2200-01-01) are invalid.
MIN_TIME_MS: Final = 946_684_800_000
MAX_TIME_MS: Final = 7_258_118_400_000
MAX_UINT64: Final = 2**64 - 1
SIDES: Final = frozenset({"buy", "sell"})
MAX_FUNDING_RATE: Final = Decimal(1)

# at most 20 integer digits and 18 significant fractional digits (trailing zeros are exact)
_FITS = re.compile(r"0*[0-9]{0,20}(?:\.[0-9]{0,18}0*)?").fullmatch


def is_plain(s: Any) -> bool:
    """An unsigned plain decimal string that fits Decimal(38, 18) exactly ("0", "5.", ".5", "0.00100")."""
    # a string of at most 19 characters cannot exceed either digit bound: only the syntax is checked
    return (
        type(s) is str
        and s.isascii()
        and s.replace(".", "", 1).isdecimal()
        and (len(s) <= 19 or _FITS(s) is not None)
    )


def is_positive(s: Any) -> bool:
    """A plain decimal string > 0."""
    return is_plain(s) and bool(s.strip("0."))


def is_signed(s: Any) -> bool:
    """A plain decimal string with an optional leading minus."""
    return is_plain(s[1:] if type(s) is str and s.startswith("-") else s)


def _time(v: Any) -> bool:
    return type(v) is int and MIN_TIME_MS <= v < MAX_TIME_MS


def _uint(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_UINT64


def _text(v: Any) -> bool:
    return type(v) is str and v != ""


def _share(s: Any) -> bool:
    return is_plain(s) and Decimal(s) <= 1


def _funding(s: Any) -> bool:
    return is_signed(s) and abs(Decimal(s)) <= MAX_FUNDING_RATE


# column -> (rule name, check); a column may be None only where its wire type is optional
_COMMON: Final[dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "exchange": ("non_empty", _text),
    "market_type": ("non_empty", _text),
    "symbol": ("non_empty", _text),
    "exchange_symbol": ("non_empty", _text),
    "timestamp": ("time_range", _time),
    "received_at": ("time_range", _time),
}
_POSITIVE_RULE = ("positive_decimal", is_positive)
_NON_NEGATIVE_RULE = ("non_negative_decimal", is_plain)
_RATIO_RULES: Final = {
    "period": ("non_empty", _text),
    "long_short_ratio": _NON_NEGATIVE_RULE,
    "long_ratio": ("share_0_1", _share),
    "short_ratio": ("share_0_1", _share),
}
RULES: Final[dict[str, dict[str, tuple[str, Callable[[Any], bool]]]]] = {
    "trade": {
        "trade_id": ("non_empty", _text),
        "price": _POSITIVE_RULE,
        "quantity": _POSITIVE_RULE,
        "quantity_contracts": _POSITIVE_RULE,
        "side": ("buy_or_sell", SIDES.__contains__),
    },
    "orderbook": {
        "update_id": ("uint64", _uint),
        "tick": ("time_range", _time),
        "depth": ("uint64", _uint),
    },
    "funding_rate": {
        "funding_rate": ("abs_at_most_1", _funding),
        "next_funding_time": ("time_range", _time),
        "mark_price": _POSITIVE_RULE,
        "index_price": _POSITIVE_RULE,
    },
    "open_interest": {
        "open_interest": _NON_NEGATIVE_RULE,
        "open_interest_value": _NON_NEGATIVE_RULE,
        "open_interest_contracts": _NON_NEGATIVE_RULE,
    },
    "liquidation": {
        "side": ("buy_or_sell", SIDES.__contains__),
        "price": _POSITIVE_RULE,
        "quantity": _POSITIVE_RULE,
        "quantity_contracts": _POSITIVE_RULE,
        "status": ("text", lambda v: type(v) is str),
    },
    "lsr_top_position": _RATIO_RULES,
    "lsr_all_account": _RATIO_RULES,
    "volatility_index": {
        "index_value": _NON_NEGATIVE_RULE,
        "open": _NON_NEGATIVE_RULE,
        "high": _NON_NEGATIVE_RULE,
        "low": _NON_NEGATIVE_RULE,
        "close": _NON_NEGATIVE_RULE,
    },
    "source_gap": {
        "gap_data_type": ("record_type", lambda v: v in RECORD_TYPES),
        "cause": ("gap_cause", frozenset(GAP_CAUSES).__contains__),
        "end_time": ("time_range", _time),
        "first_missing_id": ("text", lambda v: type(v) is str),
        "last_missing_id": ("text", lambda v: type(v) is str),
        "state": ("gap_state", frozenset(GAP_STATES).__contains__),
        "recovered": ("uint64", _uint),
        "detail": ("text", lambda v: type(v) is str),
    },
}


def _checks(data_type: str) -> tuple[tuple[int, str, str, bool, Callable[[Any], bool]], ...]:
    """(field index, column, rule, optional, check) for every column of the type but the book levels."""
    rt = RECORD_TYPES[data_type]
    rules = {**_COMMON, **RULES[data_type]}
    out = []
    for i, c in enumerate(rt.columns):
        if c.wire is Wire.LEVELS:
            continue  # checked by book_fault
        rule, check = rules[c.name]  # every column has a rule (KeyError here = a column without one)
        out.append((i, c.name, rule, c.wire in (Wire.OPT_DECIMAL, Wire.OPT_TIME_MS), check))
    return tuple(out)


CHECKS: Final = {name: _checks(name) for name in RECORD_TYPES}

# Every number of a book side at once, as "p,q;p,q;...": C-level scans instead of a check per level
_SIDE_CHARS = re.compile(r"[0-9.,;]+").fullmatch  # digits and points only: no sign, exponent, space, NaN
_TWO_POINTS = re.compile(r"\.[0-9]*\.").search  # two points in one number
_PAIR_TYPES = frozenset({tuple, list})
_NON_ZERO = methodcaller("strip", "0.")  # "" for an empty, point-only or zero number
_SHORT = 19  # a plain number of at most 19 characters is within both digit bounds of Decimal(38, 18)
_PRICE = itemgetter(0)
_FLOAT_EXACT = 15  # plain decimals of at most 15 characters order exactly as doubles (see book.levels)


def book_fault(bids: Any, asks: Any, depth: int | None = None) -> str | None:
    """The first rule a side pair breaks, or None: levels are (price, quantity) pairs of positive plain
    decimals, at most ``depth`` per side, bids strictly descending, asks strictly ascending, not crossed.
    One regular expression per side checks every level's text; order is checked on doubles where that is
    exact (prices of at most 15 characters), else on Decimals."""
    tops: list[str | None] = []
    for levels, descending in ((bids, True), (asks, False)):
        if type(levels) is not list and type(levels) is not tuple:
            return "levels_list"
        if depth is not None and len(levels) > depth:
            return "levels_within_depth"
        if not levels:
            tops.append(None)
            continue
        try:
            if not _PAIR_TYPES.issuperset(map(type, levels)) or set(map(len, levels)) != {2}:
                return "level_pair"
            text = ";".join(map(",".join, levels))
        except TypeError:
            return "level_pair"
        n = len(levels)
        if _SIDE_CHARS(text) is None or text.count(",") != n or text.count(";") != n - 1 or _TWO_POINTS(text):
            return "level_positive_decimals"
        numbers = text.replace(";", ",").split(",")
        if not all(map(_NON_ZERO, numbers)):
            return "level_positive_decimals"
        if max(map(len, numbers)) > _SHORT and not all(is_positive(x) for x in numbers if len(x) > _SHORT):
            return "level_positive_decimals"
        prices = list(map(_PRICE, levels))
        keys: list[Any] = list(map(float, prices)) if max(map(len, prices)) <= _FLOAT_EXACT else list(
            map(Decimal, prices)
        )
        if not all(map(gt if descending else lt, keys, islice(keys, 1, None))):
            return "levels_strictly_ordered"
        tops.append(prices[0])
    bid, ask = tops
    if bid is not None and ask is not None and Decimal(bid) >= Decimal(ask):
        return "book_not_crossed"
    return None


_PRICE_QTY = itemgetter(0, 1)


def plain_levels(levels: Sequence[Sequence[Any]]) -> bool:
    """Order book INPUT levels (``[price, quantity, ...]``, as the venue sends them) that a book may take:
    every price a positive plain decimal, every quantity a plain decimal (zero deletes the level), both
    within Decimal(38, 18). A few C-level scans per side, not a check per level (the book engine's hot path)."""
    if not levels:
        return True
    try:
        pairs = list(map(_PRICE_QTY, levels))
        text = ";".join(map(",".join, pairs))
    except (TypeError, IndexError, KeyError):
        return False
    n = len(pairs)
    if _SIDE_CHARS(text) is None or text.count(",") != n or text.count(";") != n - 1 or _TWO_POINTS(text):
        return False
    numbers = text.replace(";", ",").split(",")
    if "" in numbers or "." in numbers or not all(map(_NON_ZERO, numbers[::2])):  # even places: prices
        return False
    return max(map(len, numbers)) <= _SHORT or all(is_plain(x) for x in numbers if len(x) > _SHORT)


def fault(record: msgspec.Struct, book_levels: bool = True) -> str | None:
    """``"<column>:<rule>"`` for the first rule the record breaks, or None when it may be stored.

    ``book_levels=False`` skips the order book levels: the collector's books already enforce those rules on
    every level they take and on every update (``book.levels.check_levels``, ``Book.fault``), so it checks
    only the other columns (~1 ms less per 400-level book); the writer checks everything."""
    data_type = data_type_of(record)
    values = astuple(record)
    name = rule = ""
    try:
        for i, name, rule, optional, check in CHECKS[data_type]:
            v = values[i]
            if v is None:
                if optional:
                    continue
                return f"{name}:{rule}"
            if not check(v):
                return f"{name}:{rule}"
    except (TypeError, ValueError, ArithmeticError):  # e.g. an unhashable side
        return f"{name}:{rule}"
    if book_levels and data_type in BOOK_TYPES:
        r: Any = record
        broken = book_fault(r.bids, r.asks, r.depth)
        if broken is not None:
            return f"levels:{broken}"
    return None


def split(recs: Iterable[msgspec.Struct]) -> tuple[list[Any], list[tuple[Any, str]]]:
    """(valid records, [(invalid record, its fault)])."""
    good: list[Any] = []
    bad: list[tuple[Any, str]] = []
    for r in recs:
        f = fault(r)
        if f is None:
            good.append(r)
        else:
            bad.append((r, f))
    return good, bad
