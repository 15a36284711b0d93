"""The writer's event time -> visible histogram counts every row of a batch into its bucket."""

from __future__ import annotations

from marketprism_dagster.writer.metrics import WriterMetrics


def test_rows_of_a_batch_land_in_their_buckets_with_inclusive_upper_bounds() -> None:
    m = WriterMetrics()
    now = 1_800_000_000_000
    m.visible_delay.observe_batch("MARKET_DATA", [now - 1000, now - 50, now - 4000, now - 1001, now - 300], now)
    m.visible_delay.observe_batch("MARKET_DATA", [], now)
    text = m.render().decode()
    got = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
           for line in text.splitlines() if line.startswith("marketprism_writer_visible_delay_seconds_bucket")}
    assert got["0.1"] == 1 and got["0.5"] == 2 and got["1.0"] == 3 and got["1.25"] == 4 and got["5.0"] == 5
    assert got["+Inf"] == 5
    assert 'marketprism_writer_visible_delay_seconds_sum{stream="MARKET_DATA"} 6.351' in text
