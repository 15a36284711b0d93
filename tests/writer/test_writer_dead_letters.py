"""Poison messages: dead-lettered with their reason, acked and counted, never blocking their batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer import deadletter
from marketprism_dagster.writer.consumer import ConsumerConflict, durable_name, ensure_durable, read_range
from marketprism_dagster.writer.ingest import StreamMessage, classify
from tests.support.writer_helpers import expected_by_type, generate, publish, table_identities


def poison_from(good: list[Any]) -> list[tuple[str, bytes, str]]:
    """(subject, payload, expected kind) derived from real generated records."""
    trade = next(r for r in good if records.data_type_of(r) == "trade")
    funding = next(r for r in good if records.data_type_of(r) == "funding_rate")
    wire = msgspec.json.decode(records.encode(trade))
    no_price = {k: v for k, v in wire.items() if k != "price"}
    bad_decimal = dict(wire, price="12,5")
    ancient = dict(msgspec.json.decode(records.encode(funding)), timestamp=5)
    other_symbol = records.subject_for("trade", trade.exchange, trade.market_type,
                                       "ETH-USDT" if trade.symbol == "BTC-USDT" else "BTC-USDT")
    return [
        (records.subject(trade), records.encode(trade)[:-7], "undecodable"),
        (records.subject(trade), msgspec.json.encode(no_price), "schema_invalid"),
        (records.subject(trade), msgspec.json.encode(bad_decimal), "invalid_value"),
        (records.subject(funding), msgspec.json.encode(ancient), "schema_invalid"),
        (other_symbol, records.encode(trade), "subject_mismatch"),
    ]


async def test_poison_messages_land_in_the_dead_letter_stream_with_their_reason(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings()
    good = generate(800, seed=9)
    poison = poison_from(good)
    js = nc.jetstream()
    await publish(nc, good[:400])
    poison_seqs = []
    for i, (subj, payload, _) in enumerate(poison):
        ack = await js.publish(subj, payload, headers={"Nats-Msg-Id": f"poison-{i}"})
        poison_seqs.append(ack.seq)
    await publish(nc, good[400:])
    w = await start_writer(settings)
    await w.wait_committed(nc)
    metrics = await w.metrics()
    await w.close()

    dl = await read_range(js, settings.writer.dead_letter_stream, 1, 100)
    assert len(dl) == len(poison)
    by_seq = {int(m.headers["MP-Dead-Letter-Seq"]): m for m in dl if m.headers}
    assert sorted(by_seq) == sorted(poison_seqs)
    for seq, (subj, payload, kind) in zip(poison_seqs, poison, strict=True):
        m = by_seq[seq]
        assert m.data == payload
        assert m.headers is not None
        assert m.headers["MP-Dead-Letter-Kind"] == kind
        assert m.headers["MP-Dead-Letter-Subject"] == subj
        assert m.headers["MP-Dead-Letter-Stream"] == "MARKET_DATA"
        assert m.headers["MP-Original-Msg-Id"] == f"poison-{poison_seqs.index(seq)}"
        assert m.headers["MP-Dead-Letter-Reason"]
        assert m.subject == f"deadletter.MARKET_DATA.{subj.split('.')[0]}"
    assert 'marketprism_writer_dead_letters_total{reason="schema_invalid"} 2.0' in metrics
    assert 'marketprism_writer_dead_letters_total{reason="undecodable"} 1.0' in metrics

    expected = expected_by_type(good)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            assert sorted(table_identities(store, "marketprism_hot", t)) == sorted(expected[t]), t
        dead = store.query_value(
            "SELECT sum(dead_letters) FROM marketprism_meta.ingest_ledger WHERE stream = 'MARKET_DATA'"
        )
    finally:
        store.close()
    assert dead == len(poison)
    info = await js.consumer_info("MARKET_DATA", durable_name(settings, "MARKET_DATA"))
    last = (await js.stream_info("MARKET_DATA")).state.last_seq
    assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == last  # poison acked too


def test_classify_names_the_reason() -> None:
    trade = generate(50, seed=2)[0]
    ok = classify(StreamMessage(1, records.subject(trade), records.encode(trade)))
    assert not isinstance(ok, tuple) or ok[1] == trade
    bad = classify(StreamMessage(2, records.subject(trade), b"{"))
    assert not isinstance(bad, tuple) and bad.kind == "undecodable" and "JSON" in bad.reason


async def test_a_durable_with_another_start_policy_is_refused_not_reset(
    nc: NATS, writer_settings: Callable[..., Settings]
) -> None:
    from nats.js import api

    settings = writer_settings()
    js = nc.jetstream()
    name = durable_name(settings, "MARKET_DATA")
    await js.add_consumer("MARKET_DATA", api.ConsumerConfig(durable_name=name, deliver_policy=api.DeliverPolicy.LAST,
                                                            ack_policy=api.AckPolicy.EXPLICIT))
    with pytest.raises(ConsumerConflict, match="deliver_policy"):
        await ensure_durable(js, settings, "MARKET_DATA")
    info = await js.consumer_info("MARKET_DATA", name)
    assert info.config.deliver_policy == api.DeliverPolicy.LAST  # untouched
    assert await deadletter.ensure_dead_letter_stream(js, settings) == "created"
    assert await deadletter.ensure_dead_letter_stream(js, settings) == "verified"


async def test_durable_tunables_are_updated_in_place(nc: NATS, writer_settings: Callable[..., Settings]) -> None:
    js = nc.jetstream()
    assert await ensure_durable(js, writer_settings(), "ORDERBOOK_SNAP") == "created"
    assert await ensure_durable(js, writer_settings(), "ORDERBOOK_SNAP") == "verified"
    assert await ensure_durable(js, writer_settings(nats__ack_wait_s=17), "ORDERBOOK_SNAP") == "updated"
    info = await js.consumer_info("ORDERBOOK_SNAP", durable_name(writer_settings(), "ORDERBOOK_SNAP"))
    assert info.config.ack_wait == 17
