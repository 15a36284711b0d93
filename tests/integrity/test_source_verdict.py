"""The sealed hour's one-word source verdict (source_gaps.hour_summary), pure: no servers."""

from __future__ import annotations

from marketprism_dagster.source_gaps import Gap, hour_summary

HOUR = 1_767_225_600_000  # 2026-01-01 00:00 UTC
END = HOUR + 3_600_000


def _gap(data_type: str, state: str, *, ids: bool) -> Gap:
    first, last = ("100", "199") if ids else ("", "")
    return Gap("okx_derivatives", "perpetual", "BTC-USDT", data_type, "downtime", HOUR + 60_000, HOUR + 180_000,
               first, last, state, 100 if state == "repaired" else 0, "test", HOUR + 185_000)


def test_a_trade_hour_whose_gaps_were_all_refilled_by_id_is_complete() -> None:
    gaps = [_gap("trade", "open", ids=True), _gap("trade", "repaired", ids=True)]
    # the stored rows of one gap identity: the reader keeps its most final state
    summary = hour_summary([gaps[1]], "trade", HOUR, END, ["okx_derivatives:BTC-USDT"], has_ids=True)
    assert summary.verdict == "complete"
    assert summary.metadata()["source_gaps_repaired"] == 1 and summary.metadata()["trade_ids_continuous"] is True


def test_a_series_hour_refilled_from_a_history_that_is_not_the_live_feed_is_gaps_repaired() -> None:
    summary = hour_summary([_gap("funding_rate", "repaired", ids=False)], "funding_rate", HOUR, END)
    assert summary.verdict == "gaps_repaired"


def test_an_open_or_unrecoverable_gap_makes_the_hour_incomplete_and_no_gap_leaves_it_complete() -> None:
    assert hour_summary([_gap("trade", "open", ids=True)], "trade", HOUR, END, has_ids=True).verdict == "incomplete"
    assert hour_summary([_gap("funding_rate", "unrecoverable", ids=False)], "funding_rate", HOUR, END).verdict \
        == "incomplete"
    assert hour_summary([], "trade", HOUR, END, ["okx_derivatives:BTC-USDT"], has_ids=True).verdict == "complete"
