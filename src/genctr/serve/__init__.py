"""Serving a saved run: the HTTP scoring service (app.py), its request rows (rows.py),
micro-batching (batcher.py) and metrics (metrics.py)."""
