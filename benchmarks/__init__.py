"""Benchmarks: our engine side by side with pycrdt-websocket (``python -m benchmarks``).

See benchmarks/README.md.
"""
