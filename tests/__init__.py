"""Test suite for hftoolkit (a package so that helpers such as `tests.hub_server` are importable)."""
