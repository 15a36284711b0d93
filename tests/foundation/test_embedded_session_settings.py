"""The embedded store's sessions: a long holder (the writer) runs its statements on one thread, others keep two."""

from __future__ import annotations

from pathlib import Path

from marketprism_dagster.storage.embedded import EmbeddedStore

THREADS = "SELECT value FROM system.settings WHERE name = 'max_threads'"


def test_a_long_holder_runs_statements_on_one_thread_and_a_short_session_on_more(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "ch")
    try:
        short = store.query_value(THREADS)
        with store.hold():
            assert store.query_value(THREADS) == "1"
            assert store.query_value("SELECT value FROM system.settings WHERE name = 'max_insert_threads'") == "1"
            assert store.query_value(
                "SELECT value FROM system.server_settings WHERE name = 'memory_worker_period_ms'") == "1000"
        assert store.query_value(THREADS) == short != "1"
    finally:
        store.close()
