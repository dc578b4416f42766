"""The full benchmark suite of abathur_db, every figure side by side with raw sqlite3 in the same run.

Run from the checkout root::

    python -m tools.benchsuite [--scale tiny|small|large] [--runs N] [--json FILE] ...
    python -m tools.benchsuite.render FILE [-o REPORT.md]

The first seeds a realistic data set through the package's schema, runs every
workload (``workloads/``, one module per family) and saves every figure as JSON;
the second renders the Markdown report from that JSON alone.

Modules: ``dataset`` and ``seeding`` (the data), ``raw`` (the raw sqlite3 side),
``ops`` (each operation, package and raw), ``queues`` (the three queues the queue
workloads compare), ``timing`` (clocks, statistics, latency histograms pooled over runs),
``checks`` (plans, integrity, sizes), ``verdicts`` (the SPEC §6 bars),
``environment`` (machine, commit, coverage), ``render`` and ``markdown`` (the report).
"""
