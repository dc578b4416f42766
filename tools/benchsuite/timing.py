"""Timing and statistics shared by every workload: clocks, percentiles, package/raw comparisons."""

from __future__ import annotations

import collections
import gc
import math
import random
import statistics
import sys
import time
import timeit
from typing import Any, Callable

CLOCK = time.perf_counter_ns
_started = time.monotonic()


def progress(message: str) -> None:
    """Print one progress line on stderr."""
    print(f"[bench {time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


def stats(samples_ns: list[int]) -> dict[str, Any]:
    """Return n, median, p95, p99, mean, min, max (µs) and ops/s of one list of durations in ns."""
    if not samples_ns:
        return {"n": 0, "median_us": None, "p95_us": None, "p99_us": None, "mean_us": None,
                "min_us": None, "max_us": None, "ops_per_s": None}
    us = [s / 1000 for s in samples_ns]
    if len(us) > 1:
        cuts = statistics.quantiles(us, n=100, method="inclusive")
        p95, p99 = cuts[94], cuts[98]
    else:
        p95 = p99 = us[0]
    total = sum(us)
    return {
        "n": len(us),
        "median_us": round(statistics.median(us), 2),
        "p95_us": round(p95, 2),
        "p99_us": round(p99, 2),
        "mean_us": round(total / len(us), 2),
        "min_us": round(min(us), 2),
        "max_us": round(max(us), 2),
        "ops_per_s": round(len(us) / (total / 1e6), 1) if total else None,
    }


# Latency histograms: bucket k holds durations within 1 % of BUCKET_BASE ** k ns. Runs pool by
# adding their histograms, so a p99 over several runs is the p99 of all their samples (to 1 %),
# never a median of each run's p99.
BUCKET_BASE = 1.01
_LOG_BASE = math.log(BUCKET_BASE)


def latency(samples_ns: list[int]) -> dict[str, Any]:
    """Return stats() of per-task durations plus their histogram, which combine_runs pools over runs."""
    buckets = collections.Counter(round(math.log(max(ns, 1)) / _LOG_BASE) for ns in samples_ns)
    return {**stats(samples_ns), "histogram": {str(k): n for k, n in sorted(buckets.items())}}


def share_at_least(figures: dict[str, Any], us: float) -> float | None:
    """Return the percentage of a latency() dict's samples that took `us` or longer (to 1 %), None without samples."""
    histogram = figures.get("histogram")
    if not histogram:
        return None
    first = round(math.log(us * 1000) / _LOG_BASE)  # the bucket a sample of `us` falls in
    over = sum(n for k, n in histogram.items() if int(k) >= first)
    return 100 * over / sum(histogram.values())


def _pooled(runs: list[dict]) -> dict[str, Any]:
    """Return one latency() dict for several runs' latency() dicts: percentiles of every sample pooled."""
    total: collections.Counter = collections.Counter()
    for run in runs:
        total.update({int(k): n for k, n in run["histogram"].items()})
    n = sum(total.values())
    if not n:
        return runs[0]
    ordered = sorted(total.items())

    def percentile(fraction: float) -> float:
        rank, seen = fraction * (n - 1), 0
        for bucket, count in ordered:
            seen += count
            if seen > rank:
                return round(BUCKET_BASE ** bucket / 1000, 2)
        return round(BUCKET_BASE ** ordered[-1][0] / 1000, 2)

    pooled = combine_runs([{k: v for k, v in run.items() if k != "histogram"} for run in runs])
    pooled.update(n=n, median_us=percentile(0.5), p95_us=percentile(0.95), p99_us=percentile(0.99),
                  min_us=min(run["min_us"] for run in runs), max_us=max(run["max_us"] for run in runs),
                  pooled_runs=len(runs), histogram={str(k): c for k, c in ordered})
    return pooled


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator rounded to 3 places, or None when either is missing."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def compare(package_ns: list[int], raw_ns: list[int]) -> dict[str, Any]:
    """Return both sides' latency() and the package/raw time ratios of their medians and p99s.

    Over several runs, each side's percentiles pool every run's samples; the ratios are
    the medians of the runs' own, each taken side by side.
    """
    package, raw = latency(package_ns), latency(raw_ns)
    return {
        "package": package,
        "raw": raw,
        # > 1 means the package is slower; the bars compare medians, p99 is shown for context.
        "time_ratio": ratio(package["median_us"], raw["median_us"]),
        "p99_ratio": ratio(package["p99_us"], raw["p99_us"]),
        # < 1 means the package does fewer per second. From medians: a WAL checkpoint (one
        # commit in ~150 pays a few ms) lands on either side at random and would swamp a mean.
        "throughput_ratio": ratio(raw["median_us"], package["median_us"]),
    }


def paired(package: Callable[[Any], Any], raw: Callable[[Any], Any], params: list, warmup: int = 0,
           prepare: Callable[[], Any] | None = None, *, rng: random.Random) -> tuple[list[int], list[int]]:
    """Time package(p) and raw(p) for every p, the side that runs first drawn from `rng`; return both lists of ns.

    Running the pair back to back with the same parameter, first one side then the
    other, spreads cache warmth and machine noise evenly over both. Callers run both
    sides on one connection: in WAL mode a write through one connection empties the
    page cache of every other, which cost the side reading next ~70-100 µs per call
    at small scale when each side had its own connection. `prepare`, when given, runs
    untimed before every call of either side.

    The order is drawn, not alternated: an alternation can fall in step with a periodic
    event, such as T7's commits taking the WAL past wal_autocheckpoint every 17 pairs or
    so, and put it on one side for a whole run (see the README's Performance section).
    """
    prepare = prepare or (lambda: None)
    for p in params[:warmup]:
        prepare()
        package(p)
        prepare()
        raw(p)
    package_ns, raw_ns = [], []
    # As timeit does: a collection in the middle of one call would land on one side only.
    collecting = gc.isenabled()
    gc.disable()
    for p in params[warmup:]:
        raw_first = rng.random() < 0.5
        first, second = (raw, package) if raw_first else (package, raw)
        prepare()
        t0 = CLOCK()
        first(p)
        t1 = CLOCK()
        prepare()
        t2 = CLOCK()
        second(p)
        t3 = CLOCK()
        (raw_ns if raw_first else package_ns).append(t1 - t0)
        (package_ns if raw_first else raw_ns).append(t3 - t2)
    if collecting:
        gc.enable()
    return package_ns, raw_ns


class _PreparedTimer:
    """timeit.Timer's timeit() and autorange() for a call that needs an untimed preparation before each run."""

    def __init__(self, call: Callable[[], Any], setup: Callable[[], Any], prepare: Callable[[], Any]) -> None:
        self.call, self.setup, self.prepare = call, setup, prepare

    def timeit(self, number: int) -> float:
        """Return the seconds `number` calls took, each after prepare(), garbage collection off as timeit does."""
        self.setup()
        collecting = gc.isenabled()
        gc.disable()
        total = 0
        try:
            for _ in range(number):
                self.prepare()
                t0 = CLOCK()
                self.call()
                total += CLOCK() - t0
        finally:
            if collecting:
                gc.enable()
        return total / 1e9

    def autorange(self) -> tuple[int, float]:
        """Return the first number in 1, 2, 5, 10, 20, 50, … whose calls take 0.2 s or more, and their time."""
        for number in (k * 10 ** e for e in range(10) for k in (1, 2, 5)):
            took = self.timeit(number)
            if took >= 0.2:
                break
        return number, took


def timeit_pair(package: Callable[[], Any], raw: Callable[[], Any], *, repeat: int = 5, number: int | None = None,
                max_number: int | None = None, setup: Callable[[], Any] = lambda: None,
                prepare: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Time package() and raw() with timeit, `number` calls per round, rounds alternating; µs per call.

    `number` defaults to a quarter of what ``Timer.autorange`` picks for the package
    side (it fills 0.2 s), so rounds last 50 ms or more and five a side stay short;
    it never exceeds `max_number`. `setup` runs, untimed, before every round (e.g. to
    refill a queue of `max_number` items); `prepare`, untimed, before every call (e.g.
    to make the tasks a requeue takes back stale). The ratio compares the best rounds,
    as timeit advises: slower rounds measure the machine's noise, not the code.
    """
    if prepare is None:
        timers = timeit.Timer(package, setup), timeit.Timer(raw, setup)
    else:
        timers = _PreparedTimer(package, setup, prepare), _PreparedTimer(raw, setup, prepare)
    if number is None:
        number = max(1, timers[0].autorange()[0] // 4)
    number = min(number, max_number or number)
    rounds: tuple[list[float], list[float]] = ([], [])
    for k in range(repeat):
        for side in ((0, 1) if k % 2 == 0 else (1, 0)):
            rounds[side].append(timers[side].timeit(number) / number * 1e6)
    package_us, raw_us = min(rounds[0]), min(rounds[1])
    return {"number": number, "repeat": repeat, "package_us": round(package_us, 2), "raw_us": round(raw_us, 2),
            "ratio": ratio(package_us, raw_us)}


# Counts of things that must never happen are added up over runs, never averaged away.
_SUMMED = {"duplicates", "lock_errors", "other_errors", "errors", "idle_workers"}


def combine_runs(runs: list) -> Any:
    """Return the figures of several runs as one: the median of each number, the sum of error counts.

    Latency dicts (those with a histogram, see latency()) pool their samples instead: their
    percentiles are those of every sample of every run.
    """
    first = runs[0]
    if isinstance(first, dict) and "histogram" in first and len(runs) > 1:
        return _pooled(runs)
    if isinstance(first, dict):
        return {key: (sum(run[key] for run in runs) if key in _SUMMED else combine_runs([run[key] for run in runs]))
                for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
            isinstance(run, (int, float)) for run in runs):
        # A count stays a count: the lower middle value rather than the mean of two.
        return statistics.median_low(runs) if all(isinstance(run, int) for run in runs) else statistics.median(runs)
    return first
