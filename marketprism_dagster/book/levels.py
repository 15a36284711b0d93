"""The price-level book: two sorted sides keyed by exact ``Decimal`` prices.

Each side is a dict ``price -> (price_str, qty_str)`` plus a sorted list of the
keys (``bisect``), ascending on both sides: the best bid is the LAST bid key, the best ask
the FIRST ask key. The venue's original strings are kept untouched, so published levels and
the OKX checksum use exactly what the venue sent. No float is ever involved.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from decimal import Decimal

Level = tuple[str, str]  # (price, quantity) as the venue spelled them


def is_zero(qty: str) -> bool:
    """True for "0", "0.000", "0." (venue decimal strings; no exponent forms occur)."""
    return not qty.strip("0.")


class Book:
    """Both sides of one instrument's book. Pure data structure: no sequencing rules here."""

    __slots__ = ("_ask_keys", "_asks", "_bid_keys", "_bids")

    def __init__(self) -> None:
        self._bids: dict[Decimal, Level] = {}
        self._asks: dict[Decimal, Level] = {}
        self._bid_keys: list[Decimal] = []
        self._ask_keys: list[Decimal] = []

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()
        self._bid_keys.clear()
        self._ask_keys.clear()

    def load(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        """Replace the whole book (a snapshot); levels apply in order, zero quantities remove."""
        self.clear()
        for levels, side in ((bids, self._bids), (asks, self._asks)):
            for lv in levels:
                p, q = lv[0], lv[1]
                if is_zero(q):
                    side.pop(Decimal(p), None)
                else:
                    side[Decimal(p)] = (p, q)
        self._bid_keys[:] = sorted(self._bids)
        self._ask_keys[:] = sorted(self._asks)

    def apply(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]], watch: int = 0) -> bool:
        """Apply absolute level quantities (0 removes; removing an absent level is normal).

        Returns True when any change may have touched the best ``watch`` levels of a side
        (always False when ``watch`` is 0): callers cache the OKX checksum with it.
        """
        touched = False
        if bids:
            touched = _apply_side(self._bids, self._bid_keys, bids, watch, True)
        if asks:
            touched = _apply_side(self._asks, self._ask_keys, asks, watch, False) or touched
        return touched

    # -- reading
    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` levels per side, best first, as the venue's strings."""
        b, a = self._bids, self._asks
        return [b[k] for k in self._bid_keys[: -n - 1 : -1]], [a[k] for k in self._ask_keys[:n]]

    def okx_checksum(self, n: int = 25) -> int:
        """OKX CRC32 over the best ``n`` levels: bid:ask interleaved, shorter side skipped, signed."""
        b, a = self._bids, self._asks
        bs = [":".join(b[k]) for k in self._bid_keys[: -n - 1 : -1]]
        as_ = [":".join(a[k]) for k in self._ask_keys[:n]]
        nb, na = len(bs), len(as_)
        m = min(nb, na)
        parts: list[str] = [""] * (2 * m)
        parts[0::2] = bs[:m]
        parts[1::2] = as_[:m]
        if nb > m:
            parts.extend(bs[m:])
        elif na > m:
            parts.extend(as_[m:])
        crc = zlib.crc32(":".join(parts).encode())
        return crc - 0x100000000 if crc & 0x80000000 else crc

    @property
    def bid_count(self) -> int:
        return len(self._bid_keys)

    @property
    def ask_count(self) -> int:
        return len(self._ask_keys)

    def best_bid(self) -> Level | None:
        return self._bids[self._bid_keys[-1]] if self._bid_keys else None

    def best_ask(self) -> Level | None:
        return self._asks[self._ask_keys[0]] if self._ask_keys else None

    def as_dicts(self) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        """Exact numeric view (for tests and checks)."""
        return (
            {k: Decimal(v[1]) for k, v in self._bids.items()},
            {k: Decimal(v[1]) for k, v in self._asks.items()},
        )


def _apply_side(
    side: dict[Decimal, Level],
    keys: list[Decimal],
    levels: Iterable[Sequence[str]],
    watch: int,
    is_bid: bool,
) -> bool:
    if watch <= 0:  # fast path: no top-of-book tracking
        for lv in levels:
            p = lv[0]
            q = lv[1]
            k = Decimal(p)
            if not q.strip("0."):
                if side.pop(k, None) is not None:
                    del keys[bisect_left(keys, k)]
            else:
                if k not in side:
                    insort(keys, k)
                side[k] = (p, q)
        return False
    touched = False
    bound: Decimal | None = None
    check = watch > 0
    if check and len(keys) >= watch:
        bound = keys[-watch] if is_bid else keys[watch - 1]
    elif check:
        touched = True  # fewer levels than watched: every change is in the top
        check = False
    for lv in levels:
        p = lv[0]
        q = lv[1]
        k = Decimal(p)
        if check and (k >= bound if is_bid else k <= bound):  # type: ignore[operator]
            touched = True
            check = False
        if not q.strip("0."):
            if side.pop(k, None) is not None:
                del keys[bisect_left(keys, k)]
        else:
            if k not in side:
                insort(keys, k)
            side[k] = (p, q)
    return touched
