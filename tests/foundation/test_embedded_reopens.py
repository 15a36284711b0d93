"""A long holder of the embedded store (the writer) reopens it once per burst of another process's
operations, not once per operation: every chDB open keeps engine memory for the life of the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from marketprism_dagster.storage import init_schema
from marketprism_dagster.storage.embedded import EmbeddedStore

BURST = textwrap.dedent(
    """
    import sys, time
    from marketprism_dagster.storage.embedded import EmbeddedStore

    store = EmbeddedStore(sys.argv[1], lock_timeout_s=60)
    counts = []
    for _ in range(int(sys.argv[2])):
        counts.append(store.query_value("SELECT count() FROM marketprism_hot.trade"))
        time.sleep(0.05)  # the step's own work between two queries (a check evaluates, builds its result)
    store.close()
    print("queries", len(counts), store.opens)
    """
)


def test_a_holder_reopens_the_store_once_for_a_burst_of_another_processes_queries(
    tmp_path: Path, settings_factory
) -> None:
    settings = settings_factory()
    path = settings.embedded_store_path
    holder = EmbeddedStore(path)
    init_schema(holder, settings)
    script = tmp_path / "burst.py"
    script.write_text(BURST)
    stop = threading.Event()
    commits = 0

    def writer_loop() -> None:  # the writer's pattern: one operation per batch, hand over between batches
        nonlocal commits
        with holder.hold():
            while not stop.is_set():
                holder.query_value("SELECT count() FROM marketprism_meta.ingest_ledger")
                commits += 1
                holder.yield_to_waiters()
                time.sleep(0.01)

    thread = threading.Thread(target=writer_loop)
    thread.start()
    try:
        time.sleep(0.5)
        opens_before = holder.opens
        out = subprocess.run([sys.executable, str(script), str(path), "15"], capture_output=True, text=True,
                             timeout=120)
        reopened = holder.opens - opens_before
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(60)
    holder.close()
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:2] == ["queries", "15"]
    assert commits > 0
    # before: one reopen per foreign query (15); now the holder stays away until the burst is over, taking one
    # turn per SETTLE_MAX_S (2 s) of a longer burst (about 4 here)
    assert reopened <= 7, reopened
