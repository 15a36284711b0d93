"""The order book engine: exact price levels (``levels``) and venue synchronization (``sync``)."""

from marketprism_dagster.book.levels import Book, Level, is_zero
from marketprism_dagster.book.sync import BookSnapshot, Diff, SeqIdSync, Status, Ticker, UpdateIdSync

__all__ = ["Book", "BookSnapshot", "Diff", "Level", "SeqIdSync", "Status", "Ticker", "UpdateIdSync", "is_zero"]
