"""The price-level book: two sides, each a sorted key list with a parallel list of levels.

Each side keeps ``keys`` (ascending; bid keys are NEGATED prices so that the best level of
both sides is at index 0) and ``vals``, the venue's original ``(price, qty)`` strings at the
same index. A sentinel ends every key list (``None`` in ``vals``; NaN in fast mode, +inf in exact
mode), so a lookup ``keys[bisect_left(keys, k)] == k`` never needs a bounds check. Reading the best ``n`` levels
is one list slice; a quantity change at an existing price replaces one list item; only a
level that appears or disappears moves keys (a C-level ``list.insert`` / ``del``).

Keys are exact ORDER keys, never values: published levels and the OKX checksum use the
venue's strings untouched. Fast mode keys are ``float(price)``, used only where that is
provably exact: a plain decimal string of at most 15 characters has at most 15 significant
digits, and correctly rounded decimal -> double conversion of such numbers (well inside the
normal double range) is strictly monotonic (DBL_DIG = 15: distinct decimals of <= 15
significant digits map to distinct doubles), so float order == ``Decimal`` order and float
equality == ``Decimal`` equality (``"7.50"`` and ``"7.5"`` are one level, as with ``Decimal``).
Any price outside that domain (longer strings, exponents beyond 1e+-200, zero, negative,
non-finite) switches the book to exact mode: ``Decimal`` keys from then on until the next
``load``/``clear`` (a snapshot starts in fast mode again).
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from itertools import chain
from typing import Any

Level = tuple[str, str]  # (price, quantity) as the venue spelled them

_INF = float("inf")
_END = float("nan")  # fast-mode sentinel: never equal to a key, never below one
_FAST_MIN = 1e-200  # fast (float) keys only for prices strictly inside (1e-200, 1e200)
_FAST_MAX = 1e200
_FAST_LEN = 15  # ... spelled with at most 15 characters (so at most 15 significant digits)


def is_zero(qty: str) -> bool:
    """True for "0", "0.000", "0." (venue decimal strings; no exponent forms occur)."""
    return not qty.strip("0.")


class _Inexact(Exception):
    """A price the fast float keys cannot order exactly: the book switches to Decimal keys."""


def _exact_key(p: str) -> Decimal:
    try:
        d = Decimal(p)
    except InvalidOperation:
        raise ValueError(f"invalid price {p!r}") from None
    if not d.is_finite():
        raise ValueError(f"non-finite price {p!r}")
    return d


def _fast_key(p: str) -> float:
    k = float(p)  # ValueError on text that is not a number
    if len(p) > _FAST_LEN or not _FAST_MIN < k < _FAST_MAX:
        raise _Inexact(p)
    return k


class Book:
    """Both sides of one instrument's book. Pure data structure: no sequencing rules here."""

    __slots__ = ("_ak", "_av", "_bk", "_bv", "_exact")

    def __init__(self) -> None:
        self._bk: list[Any] = [_END]  # negated bid prices, ascending (best bid first)
        self._bv: list[Any] = [None]
        self._ak: list[Any] = [_END]  # ask prices, ascending (best ask first)
        self._av: list[Any] = [None]
        self._exact = False  # True: Decimal keys (some price outside the fast domain)

    def clear(self) -> None:
        self._bk[:] = self._ak[:] = [_END]
        self._bv[:] = self._av[:] = [None]
        self._exact = False

    # -- writing
    def load(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        """Replace the whole book (a snapshot); levels apply in order, zero quantities remove."""
        bids, asks = list(bids), list(asks)
        self.clear()
        try:
            self._load_side(bids, True, _fast_key)
            self._load_side(asks, False, _fast_key)
        except _Inexact:
            self._exact = True  # before the loads: the sentinel depends on the mode
            self._load_side(bids, True, _exact_key)
            self._load_side(asks, False, _exact_key)

    def _load_side(self, levels: list[Sequence[str]], bid: bool, key: Any) -> None:
        side: dict[Any, Level] = {}
        for lv in levels:
            p = lv[0]
            q = lv[1]
            k = -key(p) if bid else key(p)
            if q.strip("0."):
                side[k] = (p, q)
            else:
                side.pop(k, None)
        ks = sorted(side)
        vals: list[Any] = [side[k] for k in ks]
        ks.append(_INF if self._exact else _END)
        vals.append(None)
        if bid:
            self._bk, self._bv = ks, vals
        else:
            self._ak, self._av = ks, vals

    def apply(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]], watch: int = 0) -> bool:
        """Apply absolute level quantities (0 removes; removing an absent level is normal).

        Returns True when the best ``watch`` levels of a side changed (always False when
        ``watch`` is 0): callers cache the OKX checksum with it.
        """
        if watch > 0:
            b0 = self._bv[:watch]
            a0 = self._av[:watch]
        if not self._exact:
            try:
                _apply_fast(self._bk, self._bv, bids, self._ak, self._av, asks)
            except _Inexact:
                # re-keying keeps the order; re-applying both lists is exact because every level
                # is an absolute assignment (the last one per price wins either way)
                self._to_exact()
                _apply_exact(self._bk, self._bv, bids, True)
                _apply_exact(self._ak, self._av, asks, False)
        else:
            _apply_exact(self._bk, self._bv, bids, True)
            _apply_exact(self._ak, self._av, asks, False)
        if watch > 0:
            return self._bv[:watch] != b0 or self._av[:watch] != a0
        return False

    def apply_pairs(self, bids: Sequence[Level], asks: Sequence[Level]) -> None:
        """``apply`` for levels that are exactly ``(price, qty)`` TUPLES of str (e.g. decoded by
        msgspec as ``tuple[str, str]``): they are stored as they are, without a copy."""
        if self._exact:
            _apply_exact(self._bk, self._bv, bids, True)
            _apply_exact(self._ak, self._av, asks, False)
            return
        try:
            _apply_fast_pairs(self._bk, self._bv, bids, self._ak, self._av, asks)
        except _Inexact:
            self._to_exact()
            _apply_exact(self._bk, self._bv, bids, True)
            _apply_exact(self._ak, self._av, asks, False)

    def _to_exact(self) -> None:
        self._exact = True
        for keys, vals, sign in ((self._bk, self._bv, -1), (self._ak, self._av, 1)):
            keys[:-1] = [sign * Decimal(v[0]) for v in vals[:-1]]
            keys[-1] = _INF  # Decimal cannot be compared with the NaN sentinel

    # -- reading
    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` levels per side, best first, as the venue's strings."""
        bv, av = self._bv, self._av
        nb, na = len(bv) - 1, len(av) - 1
        return bv[: n if n < nb else nb], av[: n if n < na else na]

    def okx_checksum(self, n: int = 25) -> int:
        """OKX CRC32 over the best ``n`` levels: bid:ask interleaved, shorter side skipped, signed."""
        bs, as_ = self.top(n)
        nb, na = len(bs), len(as_)
        if nb == na:
            parts: list[Level] = [None] * (2 * nb)  # type: ignore[list-item]
            parts[0::2] = bs
            parts[1::2] = as_
        else:
            m = min(nb, na)
            parts = [None] * (2 * m)  # type: ignore[list-item]
            parts[0::2] = bs[:m]
            parts[1::2] = as_[:m]
            parts += bs[m:] if nb > m else as_[m:]
        crc = zlib.crc32(":".join(chain.from_iterable(parts)).encode())
        return crc - 0x100000000 if crc & 0x80000000 else crc

    @property
    def bid_count(self) -> int:
        return len(self._bk) - 1

    @property
    def ask_count(self) -> int:
        return len(self._ak) - 1

    def best_bid(self) -> Level | None:
        return self._bv[0]  # type: ignore[no-any-return]

    def best_ask(self) -> Level | None:
        return self._av[0]  # type: ignore[no-any-return]

    def as_dicts(self) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        """Exact numeric view (for tests and checks)."""
        return (
            {Decimal(p): Decimal(q) for p, q in self._bv[:-1]},
            {Decimal(p): Decimal(q) for p, q in self._av[:-1]},
        )


def _apply_fast(
    bk: list[Any],
    bv: list[Any],
    bids: Iterable[Sequence[str]],
    ak: list[Any],
    av: list[Any],
    asks: Iterable[Sequence[str]],
) -> None:
    """Float-keyed updates of both sides (one call per message: this is the hot loop).

    A hit (``keys[i] == k``) needs only the length check: k equals a key already proven in
    range, and two <= 15-character prices with equal doubles are equal decimals. A miss that
    inserts gets the full check. The NaN sentinel never equals anything and never compares
    below ``k``, so ``bisect_left`` stops at it and ``keys[i]`` is always valid.
    """
    bl = bisect_left
    for lv in bids:
        p = lv[0]
        q = lv[1]
        k = -float(p)
        i = bl(bk, k)
        if bk[i] == k:
            if len(p) > _FAST_LEN:
                raise _Inexact(p)
            if q.strip("0."):
                bv[i] = (p, q)
            else:
                del bk[i]
                del bv[i]
        elif q.strip("0."):
            if len(p) > _FAST_LEN or not -_FAST_MAX < k < -_FAST_MIN:
                raise _Inexact(p)
            bk.insert(i, k)
            bv.insert(i, (p, q))
    for lv in asks:  # the same loop with un-negated keys
        p = lv[0]
        q = lv[1]
        k = float(p)
        i = bl(ak, k)
        if ak[i] == k:
            if len(p) > _FAST_LEN:
                raise _Inexact(p)
            if q.strip("0."):
                av[i] = (p, q)
            else:
                del ak[i]
                del av[i]
        elif q.strip("0."):
            if len(p) > _FAST_LEN or not _FAST_MIN < k < _FAST_MAX:
                raise _Inexact(p)
            ak.insert(i, k)
            av.insert(i, (p, q))


def _apply_fast_pairs(
    bk: list[Any],
    bv: list[Any],
    bids: Iterable[Level],
    ak: list[Any],
    av: list[Any],
    asks: Iterable[Level],
) -> None:
    """``_apply_fast`` for (price, qty) tuples, stored without a copy (same rules, line for line)."""
    bl = bisect_left
    for lv in bids:
        p, q = lv
        k = -float(p)
        i = bl(bk, k)
        if bk[i] == k:
            if len(p) > _FAST_LEN:
                raise _Inexact(p)
            if q.strip("0."):
                bv[i] = lv
            else:
                del bk[i]
                del bv[i]
        elif q.strip("0."):
            if len(p) > _FAST_LEN or not -_FAST_MAX < k < -_FAST_MIN:
                raise _Inexact(p)
            bk.insert(i, k)
            bv.insert(i, lv)
    for lv in asks:
        p, q = lv
        k = float(p)
        i = bl(ak, k)
        if ak[i] == k:
            if len(p) > _FAST_LEN:
                raise _Inexact(p)
            if q.strip("0."):
                av[i] = lv
            else:
                del ak[i]
                del av[i]
        elif q.strip("0."):
            if len(p) > _FAST_LEN or not _FAST_MIN < k < _FAST_MAX:
                raise _Inexact(p)
            ak.insert(i, k)
            av.insert(i, lv)


def _apply_exact(keys: list[Any], vals: list[Any], levels: Iterable[Sequence[str]], bid: bool) -> None:
    for lv in levels:
        p = lv[0]
        q = lv[1]
        k = -_exact_key(p) if bid else _exact_key(p)
        i = bisect_left(keys, k)
        if keys[i] == k:
            if q.strip("0."):
                vals[i] = (p, q)
            else:
                del keys[i]
                del vals[i]
        elif q.strip("0."):
            keys.insert(i, k)
            vals.insert(i, (p, q))
