"""DESIGN section 10: a 3-node JetStream cluster on loopback with R3 streams survives a node loss."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import nats.errors

from marketprism_dagster import records
from marketprism_dagster.jetstream import ensure_streams
from marketprism_dagster.nats_server import EmbeddedNats, free_port


def _cluster(tmp_path: Path) -> list[EmbeddedNats]:
    client_ports = [free_port() for _ in range(3)]
    route_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)
    return [
        EmbeddedNats(
            tmp_path / f"n{i}",
            port=client_ports[i],
            extra_args=[
                "--server_name",
                f"n{i}",
                "--cluster_name",
                "marketprism",
                "--cluster",
                f"nats://127.0.0.1:{route_ports[i]}",
                "--routes",
                routes,
            ],
        )
        for i in range(3)
    ]


async def _wait_for_meta_leader(url: str, settings, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        nc = await nats.connect(url)
        try:
            return await ensure_streams(nc.jetstream(timeout=5), settings)
        except Exception as exc:  # JetStream not ready until the cluster elects a meta leader
            last = exc
            await asyncio.sleep(0.5)
        finally:
            await nc.close()
    raise AssertionError(f"cluster never became ready: {last}")


async def test_r3_streams_keep_every_record_when_one_node_dies(tmp_path, settings_factory, record_factory):
    nodes = _cluster(tmp_path)
    for n in nodes:
        n.start()
    try:
        settings = settings_factory(
            nats_url=nodes[0].url, streams__MARKET_DATA__replicas=3, streams__ORDERBOOK_SNAP__replicas=3
        )
        reports = await _wait_for_meta_leader(nodes[0].url, settings)
        assert {r.name for r in reports} == {"MARKET_DATA", "ORDERBOOK_SNAP"}

        servers = [n.url for n in nodes]
        nc = await nats.connect(servers=servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        # short API timeouts: a request to a node that just died is retried soon, on the newly elected leader
        js = nc.jetstream(timeout=3)
        info = await js.stream_info("MARKET_DATA")
        assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2

        now = int(time.time() * 1000)
        sent = [record_factory("trade", i, now) for i in range(400)]

        async def publish(recs):
            for r in recs:
                for _ in range(50):  # retry through leader elections; Msg-Id makes retries safe
                    try:
                        await js.publish(
                            records.subject(r), records.encode(r), headers={"Nats-Msg-Id": records.msg_id(r)}
                        )
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
                else:
                    raise AssertionError(f"could not publish {records.msg_id(r)}")

        await publish(sent[:200])
        nodes[1].kill()  # lose one of three: quorum remains
        await publish(sent[200:])
        # the same 400 again: all duplicates inside the window
        await publish(sent)

        info = await js.stream_info("MARKET_DATA")
        assert info.state.messages == 400
        sub = None
        for _ in range(60):  # consumer creation needs a raft group: retry through elections after the kill
            try:
                sub = await js.pull_subscribe("trade.>", durable="check")
                break
            except Exception:
                await asyncio.sleep(0.5)
        assert sub is not None, "consumer could not be created on the surviving nodes"
        got: list[str] = []
        deadline = time.monotonic() + 90
        while len(got) < 400 and time.monotonic() < deadline:
            try:
                batch = await sub.fetch(200, timeout=5)
            except nats.errors.TimeoutError:
                continue
            for m in batch:
                got.append(records.msg_id(records.decode(m.data)))
                await m.ack()
        assert sorted(got) == sorted(records.msg_id(r) for r in sent)
        await nc.close()
    finally:
        for n in nodes:
            n.stop()
