"""ClickHouse (embedded chDB or a server) as a Dagster resource, configured by the nested settings resource.

Inside a run the resource keeps ONE store session for the whole run (``setup_for_execution`` /
``teardown_after_execution``): the runs of this code location execute their steps in one process
(``in_process_executor``), so a checks run or a seal of several hours opens the embedded store once
instead of once per step. The session is opened at the first query and handed to a waiting writer
between queries once it has been held ``STEP_TENURE_S``, and at the end of every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg
import structlog
from pydantic import PrivateAttr

from marketprism_dagster.storage import open_store
from marketprism_dagster.storage.base import Store
from resources.settings import SettingsResource

log = structlog.get_logger(__name__)

# An embedded-store run keeps its session this long before handing it to a waiting writer: a check
# of a few queries then opens chDB once, and the writer waits at most this long (plus one query).
STEP_TENURE_S = 0.5


class ClickHouseResource(dg.ConfigurableResource):
    """Opens the configured store (storage.backend: embedded | clickhouse) once per run."""

    settings: SettingsResource

    _in_run: bool = PrivateAttr(default=False)
    _store: Store | None = PrivateAttr(default=None)
    _hold: contextlib.ExitStack | None = PrivateAttr(default=None)
    _uses: int = PrivateAttr(default=0)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # opened lazily by the first step that queries: a run that never does never takes the lock
        self._in_run = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        store = self._store
        if store is None:
            return
        opens = getattr(store, "opens", None)
        msg = f"one store session for the run: {self._uses} step uses"
        if opens is not None:
            msg += f", {opens} chDB opens (each hand-over to the writer costs one)"
        if context.log is not None:
            context.log.info(msg)
        log.info("clickhouse.run_session_closed", uses=self._uses, opens=opens)
        self._close()

    def _close(self) -> None:
        hold, store = self._hold, self._store
        self._hold, self._store = None, None
        try:
            if hold is not None:
                hold.close()
        finally:
            if store is not None:
                store.close()

    def _run_store(self) -> Store:
        if self._store is None:
            store = open_store(self.settings.load_settings())
            stack = contextlib.ExitStack()
            hold = getattr(store, "hold", None)  # embedded: one lock + session across the run's steps
            if hold is not None:
                stack.enter_context(hold(tenure_s=STEP_TENURE_S))
            self._store, self._hold = store, stack
        return self._store

    @contextlib.contextmanager
    def open(self) -> Iterator[Store]:
        """The store for one step: the run's shared session inside a run, a fresh one otherwise."""
        if not self._in_run:
            with _standalone(self.settings) as store:
                yield store
            return
        store = self._run_store()
        self._uses += 1
        try:
            yield store
        finally:
            # between steps nothing queries: a writer waiting for the store gets it now, not at the
            # end of the next step's first query
            yield_fn = getattr(store, "yield_to_waiters", None)
            if yield_fn is not None:
                yield_fn()


@contextlib.contextmanager
def _standalone(resource: SettingsResource) -> Iterator[Store]:
    store = open_store(resource.load_settings())
    hold = getattr(store, "hold", None)
    try:
        if hold is None:
            yield store
        else:
            with hold(tenure_s=STEP_TENURE_S):
                yield store
    finally:
        store.close()
