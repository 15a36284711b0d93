"""A sealed hour whose metadata predates a gap touching it (the collector recorded its downtime after the hour
was sealed): the ``source_gaps`` check says so (source_gaps.stale_seals / check), pure: no servers."""

from __future__ import annotations

import dataclasses

from marketprism_dagster.source_gaps import Gap, check, hours_touched, stale_seals

HOUR = 1_767_225_600_000  # 2026-01-01 00:00 UTC
H = 3_600_000
SEALED = HOUR + H + 300_000  # the hour was sealed 5 minutes after it closed


def _gap(cause: str, state: str, start: int, end: int, changed: int) -> Gap:
    return Gap("okx_derivatives", "perpetual", "BTC-USDT", "trade", cause, start, end, "", "", state, 0, "test",
               changed, changed)


def test_the_hours_a_gap_touches_are_those_the_seal_counts_it_in() -> None:
    assert list(hours_touched(_gap("downtime", "open", HOUR + 10, HOUR + 20, 0))) == [HOUR]
    assert list(hours_touched(_gap("downtime", "open", HOUR + 10, HOUR + H, 0))) == [HOUR, HOUR + H]  # end >= start
    assert list(hours_touched(_gap("downtime", "open", HOUR - 1, HOUR + 2 * H + 1, 0))) == [
        HOUR - H, HOUR, HOUR + H, HOUR + 2 * H]


def test_a_gap_recorded_after_the_seal_of_an_hour_it_touches_warns_naming_the_hour_and_the_fix() -> None:
    late = _gap("downtime", "open", HOUR + 600_000, HOUR + 900_000, SEALED + 3_600_000)
    now = SEALED + 3_600_000 + 1_000
    assert stale_seals([late], "trade", {HOUR: SEALED}) == [(HOUR, late)]
    v = check([late], "trade", now=now, grace_s=600, sealed_at={HOUR: SEALED})
    assert (v.passed, v.severity) == (False, "WARN")
    assert v.description.startswith("the metadata of 1 sealed hour (2026-01-01T00:00) is out of date: a gap "
                                    "touching it was recorded after the seal")
    assert "materialize hot trade partition 2026-01-01T00:00 again" in v.description
    assert v.metadata["stale_seals"] == ["2026-01-01T00:00: okx_derivatives:BTC-USDT downtime (test)"]
    # without the seal times (marketprism integrity, or an hour never sealed) the same gap only waits in its grace
    assert check([late], "trade", now=now, grace_s=600).passed
    assert check([late], "trade", now=now, grace_s=600, sealed_at={HOUR + H: SEALED}).passed


def test_a_gap_the_seal_already_saw_or_of_another_type_leaves_the_seal_current() -> None:
    seen = _gap("downtime", "unrecoverable", HOUR + 600_000, HOUR + 900_000, SEALED - 1)
    assert stale_seals([seen], "trade", {HOUR: SEALED}) == []
    assert stale_seals([dataclasses.replace(seen, changed_ms=SEALED + 1)], "orderbook", {HOUR: SEALED}) == []
    # a state change after the seal (open -> repaired) makes it stale too: the sealed counts are out of date
    repaired = dataclasses.replace(seen, state="repaired", changed_ms=SEALED + 1)
    assert stale_seals([repaired], "trade", {HOUR: SEALED}) == [(HOUR, repaired)]


def test_a_failing_check_keeps_its_severity_and_adds_the_stale_hours() -> None:
    overdue = _gap("trade_id_jump", "open", HOUR + 600_000, HOUR + 900_000, SEALED + 10)
    v = check([overdue], "trade", now=SEALED + 3_600_000, grace_s=600, sealed_at={HOUR: SEALED})
    assert (v.passed, v.severity) == (False, "ERROR")
    assert "still open over 600 s" in v.description
    assert "of 1 sealed hour (2026-01-01T00:00) is out of date" in v.description
