"""Benchmarks of abathur_db (not part of the installed package): ``bench.py`` and ``benchsuite``."""
