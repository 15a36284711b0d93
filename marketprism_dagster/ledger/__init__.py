"""The ingest ledger: which JetStream sequences are in the hot tables, and how many rows each hour holds.

One home for everything the writer, the seal and the integrity checks know about it:

* ``tables``: the ledger, intent, stream-epoch and lost-range (marker) tables, declared once with the record types'
  column mechanism (DDL, Arrow schema and SQL literals are derived in ``storage.columns``);
* ``messages``: the stream message every reader produces (``StreamMessage``) and header parsing;
* ``rows``: a committed range's ledger rows (pure);
* ``ranges``: sequence-range maths (merge, gaps; pure);
* ``lost``: sequences lost from the stream before the writer committed them, which hours they may
  concern, and the markers that account for them once an hour was refilled from venue history (pure);
* ``queries``: every statement that reads or writes the ledger tables (commit, resume, committed
  ranges, row counts, markers, epoch archive).

This package's ``__init__`` imports nothing: ``storage.schema`` imports ``ledger.tables`` (pure
declarations) while ``ledger.queries`` imports ``storage``, and neither may load the other's
package through here.
"""
