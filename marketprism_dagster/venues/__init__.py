"""One module per venue: pure parsers (raw message -> records), channel specs, symbol mapping.

A venue module exposes ``ADAPTER: type[VenueAdapter]`` (see ``base``). Adding a venue is one
module here plus config entries; nothing else in the tree changes.
"""
