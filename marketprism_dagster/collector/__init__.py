"""The collector's I/O runtime: WebSockets, REST, timers, publishing, health, metrics and the HTTP API.

The venue adapters (``marketprism_dagster.venues``) are pure; everything that touches a
socket lives here. Entry point: ``runtime.run_collector(settings, shard)``.
"""
