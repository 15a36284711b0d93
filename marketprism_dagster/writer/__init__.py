"""The hot writer: JetStream durable consumers -> ClickHouse hot tables, every record exactly once.

* ``ingest``: the reusable core (``commit_batch``, ``prepare_batch``/``commit_prepared``,
  ``resume_point``) and the exactly-once argument;
* ``consumer``: durable consumer creation/verification, the in-order buffer, ``read_range``;
* ``pull``: the raw pull consumer the durable is read through (``RawPullConsumer``);
* ``deadletter``: the dead-letter stream;
* ``service``: ``run_writer`` (CLI and Dagster entry point), ``WriterService``;
* ``http`` / ``metrics``: ``/health`` and ``/metrics``;
* ``cli``: ``marketprism write``.
"""
