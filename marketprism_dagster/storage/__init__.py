"""ClickHouse storage: one small interface (``Store``), two backends with the same DDL.

* ``EmbeddedStore``: chDB (the real ClickHouse engine in-process) at a data path; one
  process at a time may open a path, so every operation runs under a file lock.
* ``ServerStore``: a ClickHouse server through clickhouse-connect.

``open_store(settings)`` picks the backend from ``storage.backend``.
"""

from marketprism_dagster.storage.base import Store, StoreUnavailable
from marketprism_dagster.storage.factory import open_store
from marketprism_dagster.storage.schema import SchemaReport, init_schema

__all__ = ["SchemaReport", "Store", "StoreUnavailable", "init_schema", "open_store"]
