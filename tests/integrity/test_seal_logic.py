"""The seal's decisions as pure functions: no store, no NATS (prove -> repair -> count -> verdict)."""

from __future__ import annotations

from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.ranges import SeqRange, gaps_between, merge_ranges
from marketprism_dagster.sealing import (
    DAY_MS,
    HOUR_MS,
    HourCounts,
    Repair,
    SealReport,
    StreamProof,
    fill_report,
    hour_verdict,
    proof_verdict,
    repair_verdict,
    verdict,
)

NOW = 1_780_000_000_000 - 1_780_000_000_000 % HOUR_MS + 20 * 60_000  # 20 minutes past an hour
SETTINGS = Settings()  # hot_ttl_days 3, seal.grace_s 300


def test_an_hour_is_sealable_once_closed_and_while_hot_still_holds_it() -> None:
    last_hour = NOW - NOW % HOUR_MS - HOUR_MS
    assert hour_verdict(SETTINGS, "trade", last_hour, NOW) is None  # closed 20 min ago, grace 5 min
    open_hour = hour_verdict(SETTINGS, "trade", NOW - NOW % HOUR_MS, NOW)
    assert open_hour is not None and open_hour.retryable and "closes at" in str(open_hour)
    assert open_hour.report is not None and open_hour.report.stream == "MARKET_DATA"
    old = hour_verdict(SETTINGS, "trade", last_hour - 3 * DAY_MS, NOW)
    assert old is not None and not old.retryable and "older than the hot TTL" in str(old)


def _proof(**kw: object) -> StreamProof:
    values: dict[str, object] = {"stream": "S", "cutoff_ms": NOW - 10 * 60_000}
    values.update(kw)
    return StreamProof(**values)  # type: ignore[arg-type]


def test_proof_with_jetstream_needs_every_message_before_the_boundary_committed() -> None:
    assert proof_verdict(_proof(boundary_seq=11, committed_last=10, horizon_ms=NOW)) is None
    behind = proof_verdict(_proof(boundary_seq=11, committed_last=4, horizon_ms=NOW))
    assert behind is not None and "through seq 4" in behind and "up to seq 10" in behind
    # interior gaps are the repair's job, not a refusal
    assert proof_verdict(_proof(boundary_seq=11, committed_last=10, gaps=[SeqRange(3, 5)])) is None
    # an empty stream owes nothing
    assert proof_verdict(_proof(boundary_seq=1, committed_last=0)) is None


def test_proof_without_jetstream_rests_on_a_gapless_recent_ledger() -> None:
    recent = NOW - 60_000
    assert proof_verdict(_proof(proof="ledger", last_commit_ms=recent)) is None
    gaps = proof_verdict(_proof(proof="ledger", last_commit_ms=recent, gaps=[SeqRange(6, 8)]))
    assert gaps is not None and "1 ledger gaps (6-8" in gaps
    stale = proof_verdict(_proof(proof="ledger", last_commit_ms=NOW - 11 * 60_000))
    assert stale is not None and "committed nothing" in stale
    assert proof_verdict(_proof(proof="ledger", last_commit_ms=None)) is not None


def test_repair_verdict_refuses_gaps_left_after_the_repair() -> None:
    assert repair_verdict("S", Repair(ranges=[SeqRange(6, 8)], messages=3)) is None
    left = repair_verdict("S", Repair(ranges=[SeqRange(6, 8)], gaps_left=[SeqRange(7, 7)]))
    assert left is not None and "still has gaps" in left


def test_verdict_compares_the_ledger_rows_with_the_table() -> None:
    h = NOW - NOW % HOUR_MS - HOUR_MS
    assert verdict("trade", h, HourCounts(ledger_rows=10, rows_raw=10, rows=10)) is None
    # the writer counted a duplicate the table has merged away: raw == distinct, fewer than the ledger
    assert verdict("trade", h, HourCounts(ledger_rows=10, rows_raw=9, rows=9)) is None
    outside = verdict("trade", h, HourCounts(ledger_rows=10, rows_raw=11, rows=11))
    assert outside is not None and "outside the writer" in outside
    missing = verdict("trade", h, HourCounts(ledger_rows=10, rows_raw=8, rows=7))
    assert missing is not None and "2 rows are missing" in missing


def test_the_report_shows_what_the_repair_wrote_for_its_type() -> None:
    proof = _proof(boundary_seq=31, committed_last=30, committed_through=30, gaps=[SeqRange(11, 15)])
    repair = Repair(ranges=[SeqRange(11, 15)], messages=5, rows_by_type={"trade": 4, "funding_rate": 1},
                    committed_through=30)
    counts = HourCounts(ledger_rows=30, rows_raw=30, rows=29, symbols=["x:BTC-USDT"], min_ts_ms=1, max_ts_ms=2)
    report = fill_report(SealReport("trade", "S", NOW - NOW % HOUR_MS), proof, repair, counts)
    meta = report.metadata()
    assert meta["repaired_ranges"] == "11-15" and meta["repaired_messages"] == 5 and meta["repaired_rows"] == 4
    assert meta["committed_through"] == 30 and meta["boundary_seq"] == 31 and meta["dedup_count"] == 1
    assert meta["rows"] == 29 and meta["rows_raw"] == 30 and meta["symbols"] == "x:BTC-USDT"
    untouched = fill_report(SealReport("open_interest", "S", 0), proof, repair, counts).metadata()
    assert untouched["repaired_rows"] == 0 and untouched["repaired_messages"] == 5
    no_repair = fill_report(SealReport("trade", "S", 0), proof, None, counts).metadata()
    assert no_repair["repaired_rows"] == 0 and no_repair["repaired_ranges"] == ""


def test_ranges_merge_and_gaps_between_them() -> None:
    merged = merge_ranges([SeqRange(6, 9), SeqRange(1, 3), SeqRange(4, 5), SeqRange(12, 12), SeqRange(7, 8)])
    assert merged == [SeqRange(1, 9), SeqRange(12, 12)]
    assert gaps_between(merged) == [SeqRange(10, 11)]
    assert gaps_between(merged, upto=15) == [SeqRange(10, 11), SeqRange(13, 15)]
    assert gaps_between(merged, upto=10) == [SeqRange(10, 10)]
