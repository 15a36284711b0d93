"""Dagster definitions: thin adapters over the library (sealing, replication, integrity, supervision).

Two code locations (workspace.yaml): ``marketprism_dagster.defs.definitions`` (batch: hot and
cold assets, checks, schedules, alerts) and ``marketprism_dagster.defs.services`` (the
long-running collector and writer runs and their supervisor), so reloading batch code never
touches the collectors.
"""
