"""One module per venue: its declaration, pure parsers (raw message -> records), channel specs,
symbol mapping.

A venue module exposes ``ADAPTER: type[VenueAdapter]`` (see ``base``); ``registry`` finds it.
Adding a venue is one module here, its emulator module and its YAML entries (docs/adding-a-venue.md).
"""

from __future__ import annotations

from marketprism_dagster.venues.registry import adapter_class, adapter_for

__all__ = ["adapter_class", "adapter_for"]
