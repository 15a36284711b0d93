"""Sequence ranges of a stream: the ledger's committed ranges merged, and the gaps between them (pure)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SeqRange:
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def merge_ranges(ranges: Iterable[SeqRange]) -> list[SeqRange]:
    """Overlapping or adjacent ranges merged into maximal contiguous ones, in order."""
    out: list[SeqRange] = []
    for r in sorted(ranges, key=lambda r: r.first):
        if out and r.first <= out[-1].last + 1:
            if r.last > out[-1].last:
                out[-1] = SeqRange(out[-1].first, r.last)
        else:
            out.append(r)
    return out


def gaps_between(ranges: list[SeqRange], upto: int | None = None) -> list[SeqRange]:
    """Missing sequence numbers between committed ranges (and up to ``upto`` if given)."""
    gaps = [SeqRange(a.last + 1, b.first - 1) for a, b in itertools.pairwise(ranges)]
    if upto is not None:
        gaps = [SeqRange(g.first, min(g.last, upto)) for g in gaps if g.first <= upto]
        if ranges and ranges[-1].last < upto:
            gaps.append(SeqRange(ranges[-1].last + 1, upto))
    return gaps
