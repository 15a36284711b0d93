"""Lost sequence ranges and their markers, pure (ledger.lost, the seal's verdicts, the refill's marking rule)."""

from __future__ import annotations

from marketprism_dagster.hour_refill import Refilled, hour_markers, hour_whole
from marketprism_dagster.ledger.lost import (
    ABSENT,
    CLOCK_SKEW_MS,
    GAP,
    CommittedRange,
    LostRange,
    Marker,
    absent_ranges,
    hour_loss,
    lost_gap,
    merge_lost,
)
from marketprism_dagster.ledger.ranges import SeqRange
from marketprism_dagster.sealing import HourCounts, gone_part, lost_verdict, unaccounted_gaps, verdict
from marketprism_dagster.source_gaps import Gap, hour_summary

HOUR = 1_767_225_600_000  # 2026-01-01 00:00 UTC
H = 3_600_000
ROWS = [
    CommittedRange(1, 40, 40, HOUR + 10_000),
    CommittedRange(101, 150, 50, HOUR + 20_000),
    CommittedRange(151, 200, 45, HOUR + H + 30_000),  # committed without 5 messages the stream no longer held
    CommittedRange(201, 210, 10, HOUR + 15_000),  # a late commit of a later range: the earliest one bounds
]


def _marker(first: int, last: int, data_type: str = "trade", hour: int = HOUR) -> Marker:
    return Marker("MARKET_DATA", first, last, last - first + 1, data_type, hour, 60, 90)


def test_a_lost_gap_was_stored_before_the_earliest_commit_of_any_later_range() -> None:
    lost = lost_gap(ROWS, SeqRange(41, 100))
    assert (lost.first, lost.last, lost.missing, lost.kind) == (41, 100, 60, GAP)
    assert lost.stored_before_ms == HOUR + 15_000  # range 201-210, though committed after 101-150's 20 s
    assert lost_gap(ROWS, SeqRange(211, 220)).stored_before_ms == 0  # nothing later: unknown


def test_a_committed_range_that_held_fewer_messages_than_it_spans_is_lost() -> None:
    assert absent_ranges(ROWS) == [LostRange(151, 200, 5, HOUR + H + 30_000, ABSENT)]
    assert ROWS[0].absent == 0 and ROWS[2].absent == 5


def test_a_lost_range_may_hold_records_of_hours_up_to_its_store_time_plus_the_clock_skew() -> None:
    lost = LostRange(41, 100, 60, HOUR + H - CLOCK_SKEW_MS + 1, GAP)  # stored before 00:59:00.001
    assert lost.may_hold(HOUR) and lost.may_hold(HOUR - 5 * H)  # late messages of any earlier hour
    assert lost.may_hold(HOUR + H)  # 01:00 is within the skew of the store time
    assert not lost.may_hold(HOUR + 2 * H)
    assert not LostRange(41, 100, 60, HOUR + H - CLOCK_SKEW_MS - 1).may_hold(HOUR + H)
    assert LostRange(41, 100, 60, 0).may_hold(HOUR + 99 * H)  # an unknown store time concerns every hour


def test_a_marker_accounts_for_a_lost_range_in_its_own_type_and_hour_only() -> None:
    lost = [LostRange(41, 100, 60, HOUR + 20_000), LostRange(151, 200, 5, HOUR + 30_000, ABSENT)]
    marks = [_marker(41, 100), _marker(151, 200, "funding_rate"), _marker(151, 200, hour=HOUR - H)]
    loss = hour_loss(lost, marks, "trade", HOUR)
    assert [(r.first, m.first) for r, m in loss.accounted] == [(41, 41)]
    assert loss.unaccounted == [lost[1]]  # marked for another type and another hour, not for trade at HOUR
    assert loss.unledgered_allowance == 60
    # a marker of a narrower range does not cover a wider one
    assert hour_loss([LostRange(41, 120, 80, HOUR)], [_marker(41, 100)], "trade", HOUR).unaccounted
    # a later hour: neither range may hold its records, so nothing is owed
    later = hour_loss(lost, [], "trade", HOUR + 2 * H)
    assert later.accounted == [] and later.unaccounted == [] and later.unledgered_allowance == 0


def test_adjacent_lost_parts_of_a_gap_are_one_range_bounded_by_the_later_part() -> None:
    parts = [LostRange(41, 60, 20, HOUR + 5), LostRange(61, 100, 40, HOUR + 9), LostRange(151, 200, 5, HOUR, ABSENT)]
    assert merge_lost(parts) == [LostRange(41, 100, 60, HOUR + 9), parts[2]]
    assert merge_lost([LostRange(1, 2, 2, 0), LostRange(3, 4, 2, HOUR)])[0].stored_before_ms == 0
    assert merge_lost([LostRange(1, 2, 2, HOUR), LostRange(4, 5, 2, HOUR)]) == [LostRange(1, 2, 2, HOUR),
                                                                              LostRange(4, 5, 2, HOUR)]


def test_the_part_of_a_gap_below_the_streams_first_sequence_is_gone() -> None:
    assert gone_part(SeqRange(41, 100), 70) == (SeqRange(41, 69), SeqRange(70, 100))
    assert gone_part(SeqRange(41, 100), 101) == (SeqRange(41, 100), None)
    assert gone_part(SeqRange(41, 100), 41) == (None, SeqRange(41, 100))
    assert gone_part(SeqRange(41, 100), None) == (None, SeqRange(41, 100))  # no JetStream: nothing known gone
    gaps = [SeqRange(41, 100), SeqRange(300, 310)]
    assert unaccounted_gaps(gaps, [LostRange(41, 100, 60, HOUR)]) == [SeqRange(300, 310)]


def test_an_unaccounted_lost_range_refuses_with_the_range_the_cause_and_the_fix() -> None:
    assert lost_verdict("MARKET_DATA", "trade", HOUR, []) is None
    gap = lost_verdict("MARKET_DATA", "liquidation", HOUR, [LostRange(41, 100, 60, HOUR)])
    assert gap is not None and "MARKET_DATA seq 41 is no longer in JetStream" in gap and "41-100" in gap
    assert "may have held liquidation records of 2026-01-01T00:00:00.000+00:00" in gap
    assert "until it is refilled from the venues' history (materializing the hot partition does that" in gap
    absent = lost_verdict("MARKET_DATA", "trade", HOUR, [LostRange(151, 200, 5, HOUR, ABSENT),
                                                         LostRange(41, 100, 60, HOUR)])
    assert absent is not None and "committed MARKET_DATA seq 151-200 without 5 messages" in absent
    assert "(lost: 151-200 (5 lost), 41-100 (60 messages))" in absent


def test_the_count_allows_one_unledgered_row_per_accounted_lost_message() -> None:
    counts = HourCounts(ledger_rows=100, rows_raw=103, rows=103)
    outside = verdict("trade", HOUR, counts)
    assert outside is not None and "outside the writer" in outside
    assert verdict("trade", HOUR, counts, allowance=3) is None  # rows a crashed commit inserted before the loss
    beyond = verdict("trade", HOUR, counts, allowance=2)
    assert beyond is not None and "accounts for 100 and 2 lost messages" in beyond
    missing = verdict("trade", HOUR, HourCounts(ledger_rows=100, rows_raw=98, rows=97), allowance=60)
    assert missing is not None and "2 rows are missing" in missing  # the allowance never excuses a missing row


def test_an_hour_replaced_from_venue_history_is_gaps_repaired_even_for_trades() -> None:
    series = ["binance_derivatives:BTC-USDT"]
    assert hour_summary([], "trade", HOUR, HOUR + H, series, has_ids=True).verdict == "complete"
    replaced = hour_summary([], "trade", HOUR, HOUR + H, series, has_ids=True, replaced=True)
    assert replaced.verdict == "gaps_repaired"
    gap = Gap("binance_derivatives", "perpetual", "BTC-USDT", "trade", "trade_id_jump", HOUR + 5, HOUR + 9, "7", "8",
              "open", 0, "2 trade ids missing", HOUR + 10)
    assert hour_summary([gap], "trade", HOUR, HOUR + H, series, has_ids=True, replaced=True).verdict == "incomplete"


def _refilled(state: str = "repaired", published: int = 60, stored: int = 90) -> Refilled:
    return Refilled("binance_derivatives", "BTC-USDT", published + stored, stored, published, state, "")


def test_a_refill_marks_the_hour_only_when_it_is_whole() -> None:
    assert hour_whole([_refilled()], [], committed=True) is None
    assert "writer has not committed" in (hour_whole([_refilled()], [], committed=False) or "")
    assert "did not cover the hour" in (hour_whole([_refilled("open")], [], committed=True) or "")
    assert "no history of the type on okx_spot" in (hour_whole([_refilled()], ["okx_spot"], committed=True) or "")
    assert "no market's history answered" in (hour_whole([], [], committed=True) or "")
    (m,) = hour_markers("MARKET_DATA", "trade", HOUR, [LostRange(41, 100, 60, HOUR)], [_refilled()], "gaps")
    assert (m.first, m.last, m.missing, m.data_type, m.hour_ms, m.refilled, m.held) == (41, 100, 60, "trade", HOUR,
                                                                                        60, 90)
    assert m.label() == ("MARKET_DATA seq 41-100: 60 messages lost from the stream, hour replaced from venue "
                         "history (+60 refilled, 90 already held)")
