"""``venues/history.held_matches``: which single matches of a venue's history the stored live pushes already hold
(OKX ``trades``: one push per taker order and price, ``tradeId`` = the last match id, ``sz`` = the sum)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from marketprism_dagster.venues.history import LiveTrade, held_matches, push_start


@dataclass(frozen=True)
class Match:
    trade_id: str
    quantity: str
    price: str = "100.5"
    side: str = "buy"


def matches(*sizes: str, first: int = 1, price: str = "100.5", side: str = "buy") -> list[Match]:
    return [Match(str(first + k), q, price, side) for k, q in enumerate(sizes)]


def push(last: int, size: str, price: str = "100.5", side: str = "buy") -> LiveTrade:
    return LiveTrade(last, Decimal(size), Decimal(price), side)


def live(*pushes: LiveTrade) -> dict[int, LiveTrade]:
    return {p.trade_id: p for p in pushes}


def test_every_match_inside_a_stored_push_is_held() -> None:
    # pushes: 1..3 (size 0.6), 4 alone, 5..7 (size 3)
    fetched = matches("0.1", "0.2", "0.3", "0.4", "1", "1", "1")
    held = held_matches(fetched, live(push(3, "0.6"), push(4, "0.4"), push(7, "3")))
    assert held.held == set(range(1, 8)) and not held.unresolved


def test_a_hole_before_a_push_is_missing_and_the_push_span_is_held() -> None:
    # stored: push 1..3; pushes 4..5 and 6..7 lost; stored push 8..9 (size 0.9)
    fetched = matches("0.1", "0.2", "0.3", "1", "1", "1", "1", "0.4", "0.5")
    held = held_matches(fetched, live(push(3, "0.6"), push(9, "0.9")))
    assert held.held == {1, 2, 3, 8, 9} and not held.unresolved  # 4..7 are the missing ones


def test_the_span_is_the_one_length_whose_sizes_sum_to_the_push() -> None:
    # equal sizes: only the count of 2 sums to 2; the match below (same price and side) is another order's
    fetched = matches("1", "1", "1")
    assert push_start(push(3, "2"), {int(m.trade_id): m for m in fetched}) == 2
    held = held_matches(fetched, live(push(3, "2")))
    assert held.held == {2, 3} and not held.unresolved  # 1 lies in a hole: missing


def test_decimal_sizes_compare_by_value() -> None:
    fetched = matches("0.10", "0.2000")
    assert held_matches(fetched, live(push(2, "0.3"))).held == {1, 2}


def test_matches_newer_than_every_stored_row_are_missing() -> None:
    fetched = matches("1", "1", "1")
    held = held_matches(fetched, live(push(1, "1")))
    assert held.held == {1} and not held.unresolved


def test_a_refilled_single_match_beside_pushes_is_its_own_span() -> None:
    # 1..2 a push; 3 and 4 refilled alone earlier; 4 also the last id below the push 5..6
    fetched = matches("1", "1", "1", "1", "1", "1")
    held = held_matches(fetched, live(push(2, "2"), push(3, "1"), push(4, "1"), push(6, "2")))
    assert held.held == set(range(1, 7))


def test_a_push_the_history_does_not_explain_leaves_the_matches_below_it_unresolved() -> None:
    other_price = [Match("1", "1"), Match("2", "1", price="101"), Match("3", "1")]
    held = held_matches(other_price, live(push(3, "3")))
    assert held.held == {3} and held.unresolved == {1, 2} and held.pushes == [3]
    other_side = [Match("1", "1"), Match("2", "1", side="sell"), Match("3", "1")]
    assert held_matches(other_side, live(push(3, "2"))).unresolved == {1, 2}
    overstep = matches("1", "1", "1")  # 1 + 1 = 2 < 2.5 < 3
    assert held_matches(overstep, live(push(3, "2.5"))).unresolved == {1, 2}
    own_match_absent = matches("1", "1")  # the push's own id 3 was not fetched
    held = held_matches(own_match_absent, live(push(3, "2")))
    assert held.unresolved == {1, 2} and held.pushes == [3] and not held.held


def test_ids_that_are_not_numbers_are_left_to_their_identity() -> None:
    held = held_matches([Match("abc", "1"), Match("2", "1")], live(push(2, "1")))
    assert held.held == {2} and not held.unresolved


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(1, 50), min_size=1, max_size=4), st.booleans(),
                       st.sampled_from(["buy", "sell"]), st.integers(0, 2)), min_size=1, max_size=40),
)
def test_stored_pushes_hold_exactly_their_matches(orders: list[tuple[list[int], bool, str, int]]) -> None:
    """The venue's pushes (each a taker order: 1..4 matches at one price and side, sizes in lots), some kept off
    the store: the held matches are exactly those of the stored pushes, nothing unresolved."""
    fetched: list[Match] = []
    stored: dict[int, LiveTrade] = {}
    expected: set[int] = set()
    next_id = 1
    for sizes, kept, side, tick in orders:
        price = str(Decimal(100) + tick)
        ids = range(next_id, next_id + len(sizes))
        fetched += [Match(str(i), str(Decimal(q) / 100), price, side) for i, q in zip(ids, sizes, strict=True)]
        if kept:
            stored[ids[-1]] = LiveTrade(ids[-1], Decimal(sum(sizes)) / 100, Decimal(price), side)
            expected |= set(ids)
        next_id += len(sizes)
    held = held_matches(fetched, stored)
    assert held.held == expected and not held.unresolved
