"""The hot writer: JetStream durable consumers -> ClickHouse hot tables, every record exactly once.

* ``ingest``: the reusable core (``commit_batch``, ``prepare_batch``/``commit_prepared``) and the
  exactly-once argument; the ledger it writes and resumes from is ``marketprism_dagster.ledger``;
* ``consumer``: durable consumer creation/verification, the in-order buffer, ``read_range``;
* ``pull``: the raw pull consumer the durable is read through (``RawPullConsumer``);
* ``deadletter``: the dead-letter stream;
* ``service``: ``run_writer`` (CLI and Dagster entry point), ``WriterService``;
* ``http`` / ``metrics``: ``/health`` and ``/metrics``;
* ``cli``: ``marketprism write``.
"""
