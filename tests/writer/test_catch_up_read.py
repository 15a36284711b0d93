"""The writer's catch-up read (``read_range`` + ``add_read``) against a real nats-server: it starts at the sequence
asked for, and a sequence it skipped is called absent only when the stream no longer holds it.

Found by the kill -9 test in a fresh-clone CI run: a range committed as 5601-6400 held 400 messages, 5601-6000
were "absent" although the stream held them, and the hot table lacked their rows. The catch-up consumer's name
was the stream, the start and ``id(js) & 0xFFFF``: a consumer of an earlier read of the same start that was not
deleted had delivered 5601-6000 already, so adding "it" again returned that consumer and the read began at 6001."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster.writer.consumer import StreamBuffer, Taken, read_range
from marketprism_dagster.writer.service import add_read, first_held_hole
from tests.support.writer_helpers import generate, publish


async def _published(nc: NATS, n: int = 80) -> int:
    await publish(nc, generate(n, seed=3))
    return int((await nc.jetstream().stream_info("MARKET_DATA")).state.last_seq)


async def test_a_read_after_one_whose_consumer_was_left_behind_starts_where_it_is_asked_to(nc: NATS) -> None:
    assert await _published(nc) >= 20
    js = nc.jetstream()

    async def no_answer(*_a: Any, **_k: Any) -> bool:
        raise TimeoutError("nats: timeout")  # the delete of the first read's consumer gets no answer

    js.delete_consumer = no_answer  # type: ignore[method-assign]
    first = await read_range(js, "MARKET_DATA", 1, 10)
    second = await read_range(js, "MARKET_DATA", 1, 10)
    assert [m.seq for m in first] == [m.seq for m in second] == list(range(1, 11))


async def test_a_read_that_skips_held_sequences_adds_nothing_past_them_and_marks_nothing_absent(nc: NATS) -> None:
    await _published(nc)
    js = nc.jetstream()
    buf = StreamBuffer("MARKET_DATA", watermark=0)
    later = await read_range(js, "MARKET_DATA", 11, 10)  # what a read that began at 11 instead of 1 returns
    added, short = await add_read(buf, later, js)
    assert (added, short) == ([], True)
    assert buf.take(100) is None and buf.absent == []  # before: 1-10 absent, a range 1-20 of 10 messages

    # a read with its start, then a skip inside it: the part before the skip is kept
    head = await read_range(js, "MARKET_DATA", 1, 5)
    added, short = await add_read(buf, [*head, *later], js)
    assert [m.seq for m in added] == [1, 2, 3, 4, 5] and short
    taken = buf.take(100)
    assert taken is not None and (taken.first_seq, taken.last_seq, len(taken.messages)) == (1, 5, 5)


async def test_sequences_the_stream_no_longer_holds_are_marked_absent(nc: NATS) -> None:
    await _published(nc)
    js = nc.jetstream()
    for seq in range(1, 11):
        await js.delete_msg("MARKET_DATA", seq)
    buf = StreamBuffer("MARKET_DATA", watermark=0)
    added, short = await add_read(buf, await read_range(js, "MARKET_DATA", 1, 10), js)
    assert [m.seq for m in added] == list(range(11, 21)) and not short
    assert buf.absent == [(1, 10)]
    taken = buf.take(10)
    assert taken is not None and (taken.first_seq, taken.last_seq, len(taken.messages)) == (1, 20, 10)


async def test_a_range_is_never_committed_over_a_stretch_the_stream_still_holds(nc: NATS) -> None:
    """The last line of defence, whatever marked the stretch absent: the commit loop checks a range with holes
    (``first_held_hole``) and reads the stretch again instead of committing past it."""
    await _published(nc)
    js = nc.jetstream()
    buf = StreamBuffer("MARKET_DATA", watermark=0)
    for m in await read_range(js, "MARKET_DATA", 11, 10):
        buf.add(m.seq, m, None)
    buf.mark_absent(1, 10)  # wrongly: the stream holds 1-10
    taken = buf.take(100)
    assert taken is not None and (taken.first_seq, taken.last_seq, len(taken.messages)) == (1, 20, 10)
    assert await first_held_hole(js, "MARKET_DATA", taken) == 1
    buf.forget_absent()
    assert buf.take(100) is None  # 1 is missing again: the writer reads it

    for seq in range(1, 11):  # now really gone: the same range may be committed
        await js.delete_msg("MARKET_DATA", seq)
    assert await first_held_hole(js, "MARKET_DATA", taken) is None
    whole = await read_range(js, "MARKET_DATA", 11, 10)
    assert await first_held_hole(js, "MARKET_DATA", Taken(11, 20, whole, None)) is None
