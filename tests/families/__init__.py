"""Families written outside the package: the walk-through of adding one (``gaussian.py``)."""
