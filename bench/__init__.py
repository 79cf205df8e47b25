"""Benchmarks of taskqueue_app, one module per stage; run them all with ``python -m bench``."""
