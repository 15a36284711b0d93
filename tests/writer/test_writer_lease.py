"""One writer per durable consumer: a second writer stops with an error naming the running one."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.writer.lease import WriterLocked
from tests.support.writer_helpers import generate, publish


async def test_a_second_writer_on_the_same_durable_consumers_stops_naming_the_running_one(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings()
    first = await start_writer(settings)
    await publish(nc, generate(200, seed=41))
    await first.wait_committed(nc)
    # the second writer of these tests shares the process, as `marketprism write` beside the supervised
    # writer shares the host: its pid is alive, so it must see the lease renewed and give up
    with pytest.raises(WriterLocked) as locked:
        await start_writer(writer_settings(data_dir=str(settings.data_dir) + "-2"))
    message = str(locked.value)
    assert f"pid {os.getpid()}" in message and f"host {socket.gethostname()}" in message
    assert f"health http://127.0.0.1:{first.service.http_port}/health" in message
    assert "writer.durable_prefix" in message
    status, _ = await first.health()
    assert status == 200  # the running writer is untouched
    await first.close()

    # once it stopped (lease released), a writer starts at once
    again = await start_writer(settings)
    await publish(nc, generate(100, seed=42, first_index=5000))
    await again.wait_committed(nc)
