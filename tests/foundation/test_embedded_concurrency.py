"""Several processes share one embedded chDB store through the per-operation file lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from marketprism_dagster.storage import init_schema
from marketprism_dagster.storage.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys, time
    from tests.support.records import make_record
    from marketprism_dagster import records
    from marketprism_dagster.storage.embedded import EmbeddedStore

    path, worker, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = EmbeddedStore(path, lock_timeout_s=60)
    now = int(time.time() * 1000)
    for b in range(batches):
        recs = [make_record("trade", worker * 1_000_000 + b * size + i, now) for i in range(size)]
        store.insert("marketprism_hot", "trade", records.to_columns("trade", recs), dedup_token=f"w{worker}-b{b}")
    store.close()
    print("done", worker)
    """
)

READER = textwrap.dedent(
    """
    import sys
    from marketprism_dagster.storage.embedded import EmbeddedStore

    store = EmbeddedStore(sys.argv[1], lock_timeout_s=60)
    seen = [store.query_value("SELECT count() FROM marketprism_hot.trade") for _ in range(int(sys.argv[2]))]
    store.close()
    assert seen == sorted(seen), seen  # counts only grow: no reader sees a torn store
    print("reads", len(seen), seen[-1])
    """
)


def test_two_writer_processes_and_a_reader_share_one_store_without_loss(tmp_path: Path, settings_factory):
    settings = settings_factory()
    path = settings.embedded_store_path
    store = EmbeddedStore(path)
    init_schema(store, settings)
    store.close()

    reader = tmp_path / "reader.py"
    reader.write_text(READER)
    batches, size = 15, 200
    procs = [
        subprocess.Popen(
            # run from the repository root, where `python -c` finds the tests package
            [sys.executable, "-c", WRITER, str(path), str(w), str(batches), str(size)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    procs.append(
        subprocess.Popen(
            [sys.executable, str(reader), str(path), "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    )
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "done 1" in outputs[0][0] and "done 2" in outputs[1][0] and "reads 20" in outputs[2][0]

    store = EmbeddedStore(path)
    try:
        total, distinct = store.query_rows("SELECT count(), uniqExact(trade_id) FROM marketprism_hot.trade")[0]
        per_worker = store.query_rows(
            "SELECT intDiv(toUInt64(trade_id) - 10000000, 1000000) AS w, count() FROM marketprism_hot.trade "
            "GROUP BY w ORDER BY w"
        )
    finally:
        store.close()
    assert (total, distinct) == (2 * batches * size, 2 * batches * size)
    assert per_worker == [(1, batches * size), (2, batches * size)]


def test_a_held_store_is_handed_to_a_waiter_only_after_its_tenure(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "ch")
    waiter = store._waiters / "1-otherprocess"  # what another process's _acquire leaves while it waits
    try:
        with store.hold(tenure_s=0.5):
            store.execute("SELECT 1")
            waiter.touch()
            store.execute("SELECT 1")
            assert store._session is not None, "within the tenure the session stays open despite the waiter"
            time.sleep(0.55)
            store.execute("SELECT 1")
            assert store._session is None, "past the tenure the next operation hands the store over"
        with store.session():
            store.execute("SELECT 1")
            assert store._session is not None, "a session() spans its operations even with a waiter"
        assert store._session is None
    finally:
        waiter.unlink(missing_ok=True)
        store.close()
