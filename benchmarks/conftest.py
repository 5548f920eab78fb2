"""Benchmarks measure and report; they never assert a wall-clock time.

Run: .venv/bin/pytest benchmarks -p no:cacheprovider --benchmark-enable -m "not slow" -o addopts=""
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
