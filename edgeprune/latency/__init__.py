"""Latency tables: block signatures, the measurement plan, the SQLite cache, the table file and prediction."""
