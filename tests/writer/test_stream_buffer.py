"""StreamBuffer's ready ranges (pure): the remembered run gives the same answers as a walk from the watermark."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.writer.consumer import StreamBuffer


def _walk(buf: StreamBuffer, limit: int, start: int | None) -> tuple[int, int | None]:
    """The reference: count pending sequences from ``start``, stepping over absent ranges, up to ``limit``."""
    seq = buf.expected if start is None else start
    n, last = 0, None
    while n < limit:
        if seq in buf.pending:
            n, last, seq = n + 1, seq, seq + 1
            continue
        hi = next((h for lo, h in buf.absent if lo <= seq <= h), None)
        if hi is None:
            break
        last, seq = hi, hi + 1
    return n, last


def _msg(seq: int) -> StreamMessage:
    return StreamMessage(seq, "trade.x.spot.A", b"{}")


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 60)),
    st.tuples(st.just("ready"), st.integers(1, 30), st.one_of(st.none(), st.integers(1, 70))),
    st.tuples(st.just("commit"), st.integers(1, 30)),
    st.tuples(st.just("absent"), st.integers(0, 5)),
), max_size=80)


@given(ops)
@settings(max_examples=300, deadline=None)
def test_ready_ranges_equal_a_walk_from_the_watermark(script: list[tuple]) -> None:
    buf = StreamBuffer("MARKET_DATA", 0)
    for op in script:
        if op[0] == "add":
            buf.add(op[1], _msg(op[1]), f"ack.{op[1]}")
        elif op[0] == "ready":
            assert buf._ready(op[1], op[2]) == _walk(buf, op[1], op[2])
            assert buf.ready_count(op[1]) == _walk(buf, op[1], None)[0]
        elif op[0] == "commit":
            taken = buf.take(op[1])
            if taken is not None:
                assert (taken.first_seq, taken.last_seq) == (buf.expected, _walk(buf, op[1], None)[1])
                buf.committed(taken)
        else:  # the stream no longer holds the next few sequences
            lo = buf.expected
            buf.mark_absent(lo, lo + op[1] - 1)


def test_a_range_grows_as_deliveries_arrive_and_stops_at_the_first_missing_sequence() -> None:
    buf = StreamBuffer("MARKET_DATA", 10)
    for seq in (11, 12, 13, 15):
        buf.add(seq, _msg(seq), None)
    assert buf._ready(100) == (3, 13)
    buf.add(14, _msg(14), None)
    assert buf._ready(100) == (5, 15)
    assert buf._ready(2) == (2, 12)
    assert buf._ready(100, 16) == (0, None)
    taken = buf.take(4)
    assert taken is not None and [m.seq for m in taken.messages] == [11, 12, 13, 14]
    buf.committed(taken)
    assert buf._ready(100) == (1, 15)
