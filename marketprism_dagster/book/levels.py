"""The price-level book: two sides, each a sorted key list with a parallel list of levels.

Each side keeps ``keys`` ascending with the BEST level LAST (bid keys are prices, ask keys are
NEGATED prices) and ``vals``, the venue's original ``(price, qty)`` strings at the same index.
Best-last matters: most level insertions and removals happen near the top of the book, and a
``list.insert``/``del`` there moves only the few entries behind it. A sentinel ends every key
list (``None`` in ``vals``; NaN in fast mode, +inf in exact mode), so a lookup
``keys[bisect_left(keys, k)] == k`` never needs a bounds check. Reading the best ``n`` levels is
two list slices; a quantity change at an existing price replaces one list item; only a level
that appears or disappears moves keys.

Keys are exact ORDER keys, never values: published levels and the CRC32 checksum use the
venue's strings untouched. Fast mode keys are ``float(price)``, used only where that is
provably exact: a plain decimal string of at most 15 characters has at most 15 significant
digits, and correctly rounded decimal -> double conversion of such numbers (well inside the
normal double range) is strictly monotonic (DBL_DIG = 15: distinct decimals of <= 15
significant digits map to distinct doubles), so float order == ``Decimal`` order and float
equality == ``Decimal`` equality (``"7.50"`` and ``"7.5"`` are one level, as with ``Decimal``).
Any price outside that domain (longer strings, values beyond 1e+-200) switches the book to
exact mode: ``Decimal`` keys from then on until the next ``load``/``clear`` (a snapshot starts in
fast mode again).

Every level the book takes is checked: a snapshot's all at once (``check_levels``), an update's
where the hot loops set a level (two ``lstrip`` calls and a length test per level, the exact
rule only for a long quantity: ``_check_level``): the price a positive plain decimal, the
quantity a plain decimal (zero deletes), both within Decimal(38, 18); "-0", "0e0", "-5", "1e30",
"abc", "NaN" raise ValueError, and the synchronizers drop the book and resync (one bad level
never stays in a book, so it never reaches a published row).
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from itertools import chain, islice, repeat
from operator import itemgetter, lt, neg
from typing import Any

from marketprism_dagster.validation import is_plain, plain_levels

Level = tuple[str, str]  # (price, quantity) as the venue spelled them

_INF = float("inf")
_END = float("nan")  # fast-mode sentinel: never equal to a key, never below one
_FAST_MIN = 1e-200  # fast (float) keys only for prices strictly inside (1e-200, 1e200)
_FAST_MAX = 1e200
_FAST_LEN = 15  # ... spelled with at most 15 characters (so at most 15 significant digits)
_PLAIN = "0123456789."
_SCAN_FROM = 16  # sides with more levels are checked by ``validation.plain_levels``' C-level scans
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


def is_zero(qty: str) -> bool:
    """True for "0", "0.000", "0." (venue decimal strings; no exponent forms occur)."""
    return not qty.strip("0.")


class _Inexact(Exception):
    """A price the fast float keys cannot order exactly: the book switches to Decimal keys."""


def check_levels(bids: Any, asks: Any) -> None:
    """ValueError unless every level is one the book may take: a positive plain decimal price and a plain
    decimal quantity, both within Decimal(38, 18) (``validation.plain_levels``: no sign, exponent, spaces or
    Infinity/NaN; "-0" and "0e0" are malformed, "0" / "0.000" delete the level)."""
    for levels in (bids, asks):
        if len(levels) <= _SCAN_FROM:  # a few levels (most diffs): one short check each is cheaper than the scans
            for lv in levels:
                p = lv[0]
                q = lv[1]
                # only digits and points, a short quantity with one point at most: the rest of the rule holds
                # where the book takes the level (float(price) fails on "", "." and two points; a price is
                # inserted only inside (1e-200, 1e200), else exact mode checks it: zero is refused there)
                if p.lstrip(_PLAIN) or q.lstrip(_PLAIN) or not q or len(q) > 19 or q.count(".") > 1:
                    break  # possibly malformed: the exact check below decides
            else:
                continue
        if not plain_levels(levels):
            bad = next((lv for lv in levels if not plain_levels([lv])), None) if isinstance(levels, list) else None
            raise ValueError(f"malformed book level {bad!r}: want a positive decimal price and a decimal size")


def _exact_key(p: str) -> Decimal:
    if not (is_plain(p) and p.strip("0.")):
        raise ValueError(f"invalid price {p!r}: want a positive plain decimal")
    try:
        return Decimal(p)
    except InvalidOperation:
        raise ValueError(f"invalid price {p!r}") from None


def _check_level(p: str, q: str) -> None:
    """The exact rule for a level the loops' quick test did not pass (see the module docstring)."""
    if not (is_plain(p) and p.strip("0.") and is_plain(q)):
        raise ValueError(f"malformed book level {[p, q]!r}: want a positive decimal price and a decimal size")


def _fast_key(p: str) -> float:
    k = float(p)  # ValueError on text that is not a number
    if len(p) > _FAST_LEN or not _FAST_MIN < k < _FAST_MAX:
        raise _Inexact(p)
    return k


class Book:
    """Both sides of one instrument's book. Pure data structure: no sequencing rules here."""

    __slots__ = ("_ak", "_av", "_bk", "_bv", "_exact")

    def __init__(self) -> None:
        self._bk: list[Any] = [_END]  # bid prices, ascending (best bid last, before the sentinel)
        self._bv: list[Any] = [None]
        self._ak: list[Any] = [_END]  # negated ask prices, ascending (best ask last)
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
        check_levels(bids, asks)
        try:
            for levels, bid in ((bids, True), (asks, False)):
                if not _load_sorted(self, levels, bid):
                    self._load_side(levels, bid, _fast_key)
        except _Inexact:
            self._exact = True  # before the loads: the sentinel depends on the mode
            self._load_side(bids, True, _exact_key)
            self._load_side(asks, False, _exact_key)

    def _load_side(self, levels: list[Sequence[str]], bid: bool, key: Any) -> None:
        side: dict[Any, Level] = {}
        for lv in levels:
            p = lv[0]
            q = lv[1]
            k = key(p) if bid else -key(p)
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
        ``watch`` is 0): callers cache the top-levels checksum with it.
        """
        return self._apply_watched(_apply_fast, _listed(bids), _listed(asks), watch)

    def apply_pairs(self, bids: Sequence[Level], asks: Sequence[Level], short_prices: bool = False) -> None:
        """``apply`` for levels that are exactly ``(price, qty)`` TUPLES of str (e.g. decoded by
        msgspec as ``tuple[str, str]``): they are stored as they are, without a copy.

        ``short_prices``: the caller guarantees every price has at most 15 characters (its
        decoder enforced ``msgspec.Meta(max_length=15)``); otherwise they are checked here first.
        The pairs hot loop is inlined here (one call per message); the same rules as
        ``_apply_fast`` with the length check hoisted out of the loop."""
        if self._exact:
            self._apply_exact(bids, asks)
            return
        if not short_prices and (_too_long(bids) or _too_long(asks)):
            self._to_exact()
            self._apply_exact(bids, asks)
            return
        bl = bisect_left
        keys, vals = self._bk, self._bv
        try:
            for lv in bids:
                p, q = lv
                k = float(p)
                i = bl(keys, k)
                if keys[i] == k:  # <= 15 characters and an equal double: the same decimal
                    if q.strip("0."):
                        if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                            _check_level(p, q)
                        vals[i] = lv
                    else:
                        del keys[i]
                        del vals[i]
                elif q.strip("0."):
                    if not _FAST_MIN < k < _FAST_MAX:
                        raise _Inexact(p)
                    if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                        _check_level(p, q)
                    keys.insert(i, k)
                    vals.insert(i, lv)
            keys, vals = self._ak, self._av
            for lv in asks:  # negated keys
                p, q = lv
                k = -float(p)
                i = bl(keys, k)
                if keys[i] == k:
                    if q.strip("0."):
                        if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                            _check_level(p, q)
                        vals[i] = lv
                    else:
                        del keys[i]
                        del vals[i]
                elif q.strip("0."):
                    if not -_FAST_MAX < k < -_FAST_MIN:
                        raise _Inexact(p)
                    if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                        _check_level(p, q)
                    keys.insert(i, k)
                    vals.insert(i, lv)
        except _Inexact:
            self._to_exact()
            self._apply_exact(bids, asks)

    def apply_quads(
        self,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        watch: int = 0,
        short_prices: bool = False,
    ) -> bool:
        """``apply`` for levels that are exactly 4-TUPLES ``(price, qty, _, _)`` of str (e.g.
        decoded by msgspec as ``tuple[str, str, str, str]``): unpacked without indexing. Same result as ``apply``.
        ``short_prices`` as in ``apply_pairs``."""
        if not self._exact and not short_prices and (_too_long(bids) or _too_long(asks)):
            self._to_exact()  # re-keys only: the levels ``watch`` compares are unchanged
        return self._apply_watched(_apply_fast_quads, bids, asks, watch)

    def _apply_watched(
        self, fast: Any, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]], watch: int
    ) -> bool:
        """``fast`` (one of the ``_apply_fast*`` loops) in fast mode, exact keys otherwise or when
        it meets a price outside the fast domain; True when the best ``watch`` levels changed."""
        if watch > 0:
            b0 = self._bv[-1 - watch : -1]
            a0 = self._av[-1 - watch : -1]
        if self._exact:
            self._apply_exact(bids, asks)
        else:
            try:
                fast(self._bk, self._bv, bids, self._ak, self._av, asks)
            except _Inexact:
                self._to_exact()
                self._apply_exact(bids, asks)
        if watch > 0:
            return self._bv[-1 - watch : -1] != b0 or self._av[-1 - watch : -1] != a0
        return False

    def _apply_exact(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        # after a switch from fast mode this re-applies the whole message: exact, because every
        # level is an absolute assignment (the last one per price wins either way)
        _apply_exact(self._bk, self._bv, bids, True)
        _apply_exact(self._ak, self._av, asks, False)

    def _to_exact(self) -> None:
        """Re-key both sides with Decimal prices (same order); the book stays in exact mode until cleared."""
        self._exact = True
        for keys, vals, sign in ((self._bk, self._bv, 1), (self._ak, self._av, -1)):
            keys[:-1] = [sign * Decimal(v[0]) for v in vals[:-1]]
            keys[-1] = _INF  # Decimal cannot be compared with the NaN sentinel

    # -- reading
    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` levels per side, best first, as the venue's strings."""
        if n <= 0:
            return [], []
        stop = -2 - n  # one reversed slice per side, from the best (just before the sentinel)
        return self._bv[-2:stop:-1], self._av[-2:stop:-1]

    def crc32_checksum(self, n: int = 25) -> int:
        """Signed CRC32 of the best ``n`` levels as ``price:qty`` strings, bid and ask interleaved
        (best bid, best ask, second bid, ...), the shorter side's missing levels skipped, joined by ``:``.

        One ``join`` over the venue's own strings. (Keeping a "price:qty" string per level to
        join fewer items was measured: its upkeep on every level costs what it saves.)"""
        bs, as_ = self.top(n)
        nb, na = len(bs), len(as_)
        if nb == na:
            parts: list[Any] = [None] * (2 * nb)
            parts[0::2] = bs
            parts[1::2] = as_
        else:
            m = min(nb, na)
            parts = [None] * (2 * m)
            parts[0::2] = bs[:m]
            parts[1::2] = as_[:m]
            parts += bs[m:] if nb > m else as_[m:]
        crc = zlib.crc32(":".join(chain.from_iterable(parts)).encode())
        return crc - 0x100000000 if crc & 0x80000000 else crc

    def fault(self, max_levels: int) -> str | None:
        """What makes the book unpublishable, or None: ``"book_too_deep"`` when a side holds more than
        ``max_levels`` levels (memory is bounded by venue input only through this), ``"book_crossed"`` when
        the best bid is not below the best ask. O(1): sides are sorted by construction."""
        bk, ak = self._bk, self._ak
        if len(bk) > max_levels + 1 or len(ak) > max_levels + 1:
            return "book_too_deep"
        if len(bk) > 1 and len(ak) > 1 and bk[-2] >= -ak[-2]:  # bid keys are prices, ask keys negated prices
            return "book_crossed"
        return None

    @property
    def bid_count(self) -> int:
        return len(self._bk) - 1

    @property
    def ask_count(self) -> int:
        return len(self._ak) - 1

    def best_bid(self) -> Level | None:
        return self._bv[-2] if len(self._bv) > 1 else None

    def best_ask(self) -> Level | None:
        return self._av[-2] if len(self._av) > 1 else None

    def as_dicts(self) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        """Exact numeric view (for tests and checks)."""
        return (
            {Decimal(p): Decimal(q) for p, q in self._bv[:-1]},
            {Decimal(p): Decimal(q) for p, q in self._av[:-1]},
        )


def _listed(levels: Iterable[Sequence[str]]) -> Sequence[Sequence[str]]:
    return levels if isinstance(levels, list | tuple) else list(levels)


def _too_long(levels: Iterable[Sequence[str]]) -> bool:
    return any(len(lv[0]) > _FAST_LEN for lv in levels)


def _load_sorted(book: Book, levels: list[Sequence[str]], bid: bool) -> bool:
    """Bulk (C-level) load of one side when every level is non-zero and the keys are strictly
    ascending in book order (venues send snapshots best first); False: use the general path.
    Raises ``_Inexact`` when a price is outside the fast domain (the book switches to Decimal)."""
    if not levels:
        return False
    ps = list(map(_FIRST, levels))
    qs = list(map(_SECOND, levels))
    ks = list(map(float, ps))  # ValueError on text that is not a number
    # NaN never passes both bounds of min/max nor the strict order check below
    if max(map(len, ps)) > _FAST_LEN or not (min(ks) > _FAST_MIN and max(ks) < _FAST_MAX):
        raise _Inexact(ps)
    if not bid:
        ks = list(map(neg, ks))
    ks.reverse()  # best first -> best last
    if not all(map(str.strip, qs, repeat("0."))) or not all(map(lt, ks, islice(ks, 1, None))):
        return False
    vals: list[Any] = list(zip(ps, qs, strict=True))
    vals.reverse()
    ks.append(_END)
    vals.append(None)
    if bid:
        book._bk, book._bv = ks, vals
    else:
        book._ak, book._av = ks, vals
    return True


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
        k = float(p)
        i = bl(bk, k)
        if bk[i] == k:
            if len(p) > _FAST_LEN:
                raise _Inexact(p)
            if q.strip("0."):
                if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                    _check_level(p, q)
                bv[i] = (p, q)
            else:
                del bk[i]
                del bv[i]
        elif q.strip("0."):
            if len(p) > _FAST_LEN or not _FAST_MIN < k < _FAST_MAX:
                raise _Inexact(p)
            if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                _check_level(p, q)
            bk.insert(i, k)
            bv.insert(i, (p, q))
    for lv in asks:  # the same loop with negated keys
        p = lv[0]
        q = lv[1]
        k = -float(p)
        i = bl(ak, k)
        if ak[i] == k:
            if len(p) > _FAST_LEN:
                raise _Inexact(p)
            if q.strip("0."):
                if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                    _check_level(p, q)
                av[i] = (p, q)
            else:
                del ak[i]
                del av[i]
        elif q.strip("0."):
            if len(p) > _FAST_LEN or not -_FAST_MAX < k < -_FAST_MIN:
                raise _Inexact(p)
            if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                _check_level(p, q)
            ak.insert(i, k)
            av.insert(i, (p, q))


def _apply_fast_quads(
    bk: list[Any],
    bv: list[Any],
    bids: Iterable[Sequence[str]],
    ak: list[Any],
    av: list[Any],
    asks: Iterable[Sequence[str]],
) -> None:
    """``_apply_fast`` for (price, qty, _, _) 4-tuples whose prices are known to have at most 15
    characters (``apply_quads`` checked or its caller's decoder enforced it): the hit path needs no
    length check, the insert path keeps the range check."""
    bl = bisect_left
    for p, q, _, _ in bids:
        k = float(p)
        i = bl(bk, k)
        if bk[i] == k:
            if q.strip("0."):
                if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                    _check_level(p, q)
                bv[i] = (p, q)
            else:
                del bk[i]
                del bv[i]
        elif q.strip("0."):
            if not _FAST_MIN < k < _FAST_MAX:
                raise _Inexact(p)
            if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                _check_level(p, q)
            bk.insert(i, k)
            bv.insert(i, (p, q))
    for p, q, _, _ in asks:
        k = -float(p)
        i = bl(ak, k)
        if ak[i] == k:
            if q.strip("0."):
                if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                    _check_level(p, q)
                av[i] = (p, q)
            else:
                del ak[i]
                del av[i]
        elif q.strip("0."):
            if not -_FAST_MAX < k < -_FAST_MIN:
                raise _Inexact(p)
            if q.lstrip(_PLAIN) or p.lstrip(_PLAIN) or len(q) > 19 or q.count(".") > 1:
                _check_level(p, q)
            ak.insert(i, k)
            av.insert(i, (p, q))


def _apply_exact(keys: list[Any], vals: list[Any], levels: Iterable[Sequence[str]], bid: bool) -> None:
    for lv in levels:
        p = lv[0]
        q = lv[1]
        k = _exact_key(p) if bid else -_exact_key(p)
        i = bisect_left(keys, k)
        if q.strip("0.") and not is_plain(q):
            _check_level(p, q)
        if keys[i] == k:
            if q.strip("0."):
                vals[i] = (p, q)
            else:
                del keys[i]
                del vals[i]
        elif q.strip("0."):
            keys.insert(i, k)
            vals.insert(i, (p, q))
