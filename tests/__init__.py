"""The test suite as a package: shared helpers are imported as ``tests.support.<module>``."""
