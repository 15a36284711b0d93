"""Accepting a loss no venue history can refill, pure: the plan (ledger.lost.plan_acceptance), its refusals
(accept_loss.refusal), the accepted marker's label and count rule, the sealed hour's metadata, the aged_out refusal
naming the command, the column migration and the integrity listing."""

from __future__ import annotations

from marketprism_dagster.accept_loss import AcceptPlan, hours_between, refusal, rows
from marketprism_dagster.integrity import accepted_losses
from marketprism_dagster.ledger.lost import (
    ABSENT,
    ACCEPTED,
    VENUE_HISTORY,
    LostRange,
    Marker,
    hour_loss,
    plan_acceptance,
)
from marketprism_dagster.ledger.tables import LOST
from marketprism_dagster.sealing import HourCounts, SealReport, StreamProof, fill_report, lost_verdict
from marketprism_dagster.source_gaps import hour_summary
from marketprism_dagster.storage.schema import meta_migrations

HOUR = 1_767_225_600_000  # 2026-01-01 00:00 UTC
H = 3_600_000
LOST_RANGE = LostRange(41, 100, 60, HOUR + H + 20_000)  # stored after the hour: may hold its records
ABSENT_RANGE = LostRange(151, 200, 5, HOUR + 2 * H, ABSENT)
NOW = HOUR + 5 * H


def _accepted(first: int, last: int, hour: int = HOUR, data_type: str = "liquidation") -> Marker:
    return Marker("MARKET_DATA", first, last, last - first + 1, data_type, hour, 0, 0, "outage 12-01", "",
                  ACCEPTED, NOW)


def test_accepting_an_hour_marks_each_lost_range_the_seal_would_refuse_it_for() -> None:
    plan = plan_acceptance("MARKET_DATA", [LOST_RANGE, ABSENT_RANGE], [], "liquidation", HOUR, "outage 12-01", NOW)
    assert [(m.first, m.last, m.missing, m.data_type, m.hour_ms, m.resolution, m.detail, m.recorded_at_ms)
            for m in plan.new] == [
        (41, 100, 60, "liquidation", HOUR, ACCEPTED, "outage 12-01", NOW),
        (151, 200, 5, "liquidation", HOUR, ACCEPTED, "outage 12-01", NOW),
    ]
    assert not plan.nothing_lost and plan.accepted == [] and plan.refilled == []
    # the markers account for exactly what the seal found unaccounted: nothing is left
    assert hour_loss([LOST_RANGE, ABSENT_RANGE], plan.new, "liquidation", HOUR).unaccounted == []


def test_accepting_again_plans_nothing_new_and_a_refilled_or_unconcerned_hour_has_nothing_lost() -> None:
    again = plan_acceptance("MARKET_DATA", [LOST_RANGE], [_accepted(41, 100)], "liquidation", HOUR, "x", NOW)
    assert again.new == [] and [m.detail for m in again.accepted] == ["outage 12-01"] and not again.nothing_lost
    refill = Marker("MARKET_DATA", 41, 100, 60, "trade", HOUR, 60, 10)
    refilled = plan_acceptance("MARKET_DATA", [LOST_RANGE], [refill], "trade", HOUR, "x", NOW)
    assert refilled.nothing_lost and refilled.refilled == [refill] and refilled.new == []
    later = plan_acceptance("MARKET_DATA", [LOST_RANGE], [], "liquidation", HOUR + 3 * H, "x", NOW)
    assert later.nothing_lost and later.new == []  # stored before that hour started: cannot hold its records
    other_type = plan_acceptance("MARKET_DATA", [LOST_RANGE], [_accepted(41, 100)], "orderbook", HOUR, "x", NOW)
    assert len(other_type.new) == 1  # an acceptance is per type and hour


def _plan(*hours: int, history: list[str] | None = None, too_old: list[int] | None = None) -> AcceptPlan:
    return AcceptPlan("liquidation", "MARKET_DATA",
                      [plan_acceptance("MARKET_DATA", [LOST_RANGE], [], "liquidation", h, "r", NOW) for h in hours],
                      history=history or [], too_old=too_old or [])


def test_refusals_name_the_cause_and_the_fix() -> None:
    assert refusal(_plan(HOUR, HOUR + H), force=False) is None
    nothing = refusal(_plan(HOUR, HOUR + 3 * H), force=False)
    assert nothing is not None and nothing.startswith("nothing is lost in hour 2026-01-01T03:00 of liquidation")
    assert "accept only the hours the seal refuses aged_out" in nothing
    history = refusal(_plan(HOUR, history=["binance_derivatives"]), force=False)
    assert history is not None and "materialize the hot partition 2026-01-01T00:00" in history
    assert "marketprism backfill --market binance_derivatives --type liquidation" in history and "--force" in history
    assert refusal(_plan(HOUR, history=["binance_derivatives"]), force=True) is None
    old = refusal(_plan(HOUR, too_old=[HOUR]), force=True)
    assert old is not None and "older than the hot TTL" in old


def test_the_listing_says_what_is_accepted_already_and_what_would_be() -> None:
    plan = AcceptPlan("liquidation", "MARKET_DATA", [
        plan_acceptance("MARKET_DATA", [LOST_RANGE], [], "liquidation", HOUR, "r", NOW),
        plan_acceptance("MARKET_DATA", [LOST_RANGE], [_accepted(41, 100, HOUR + H)], "liquidation", HOUR + H, "r",
                        NOW),
    ])
    assert rows(plan, dry_run=True) == [
        ("liquidation", "2026-01-01T00:00", "MARKET_DATA seq 41-100 (60 messages)", "would accept"),
        ("liquidation", "2026-01-01T01:00", "MARKET_DATA seq 41-100 (60 messages)",
         "already accepted at 2026-01-01T05:00:00+00:00: outage 12-01"),
    ]
    assert hours_between(HOUR + 5, HOUR + 2 * H + 59_000) == [HOUR, HOUR + H, HOUR + 2 * H]


def test_an_accepted_range_counts_like_a_refilled_one_and_the_hour_seals_incomplete_saying_so() -> None:
    loss = hour_loss([LOST_RANGE], [_accepted(41, 100)], "liquidation", HOUR)
    assert loss.unaccounted == [] and loss.unledgered_allowance == 60 and loss.accepted == [_accepted(41, 100)]
    report = SealReport("liquidation", "MARKET_DATA", HOUR)
    fill_report(report, StreamProof("MARKET_DATA", HOUR + H), None, HourCounts(7, 8, 8), loss)
    report.source = hour_summary([], "liquidation", HOUR, HOUR + H, ["okx:BTC-USDT"], replaced=True,
                                 accepted_loss=bool(report.accepted))
    meta = report.metadata()
    label = ("MARKET_DATA seq 41-100: 60 messages lost from the stream, loss accepted by operator at "
             "2026-01-01T05:00:00+00:00: outage 12-01")
    assert meta["lost_accepted"] == label and meta["lost_ranges"] == label
    assert meta["source"] == "incomplete" and meta["proof"] == "ledger+jetstream+accepted_loss"
    assert meta["unledgered_rows"] == 1
    # a type without a source verdict (source_gap) still says incomplete
    bare = SealReport("source_gap", "MARKET_DATA", HOUR, accepted=[label])
    assert bare.metadata()["source"] == "incomplete"
    # without the acceptance the same hour would have been gaps_repaired, never incomplete
    assert hour_summary([], "liquidation", HOUR, HOUR + H, ["okx:BTC-USDT"], replaced=True).verdict == "gaps_repaired"


def test_the_aged_out_refusal_names_the_accept_loss_command() -> None:
    why = lost_verdict("MARKET_DATA", "liquidation", HOUR, [LOST_RANGE])
    assert why is not None
    assert "marketprism accept-loss --type liquidation --hour 2026-01-01T00:00 --reason TEXT" in why


def test_the_resolution_column_is_added_to_an_existing_markers_table_with_refills_as_its_default() -> None:
    assert LOST.column_names[-1] == "resolution"
    assert meta_migrations("meta", LOST) == [
        "ALTER TABLE `meta`.`ingest_lost` ADD COLUMN IF NOT EXISTS `resolution` LowCardinality(String) "
        "DEFAULT 'venue_history'"]
    assert VENUE_HISTORY == "venue_history"


def test_integrity_lists_each_accepted_range_and_type_once_with_its_hours() -> None:
    marks = [_accepted(41, 100, HOUR + H), _accepted(41, 100), _accepted(41, 100, data_type="orderbook"),
             Marker("MARKET_DATA", 41, 100, 60, "trade", HOUR, 60, 10)]  # a refill is not an acceptance
    assert accepted_losses(marks) == [
        ("MARKET_DATA", "41-100", 60, "liquidation", "2026-01-01 00:00 .. 2026-01-01 01:00 (2 hours)",
         "2026-01-01T05:00:00", "outage 12-01"),
        ("MARKET_DATA", "41-100", 60, "orderbook", "2026-01-01 00:00", "2026-01-01T05:00:00", "outage 12-01"),
    ]
