"""Tests of the benchmark package bench/ (see conftest.py)."""
