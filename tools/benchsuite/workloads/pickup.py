"""Pickup latency: from enqueueing a task to its claim by an idle worker waiting in claim_next(wait=…),
the worker in the same process and in another one; and the CPU an idle waiting worker uses."""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import time

import abathur_db
from abathur_db import tasks

from ..markdown import Markdown, us
from ..ops import Bench
from ..timing import CLOCK, latency, progress

WAIT_SECONDS = 5  # each claim_next(wait=…) of the worker; only reached if a pickup is lost
TIMEOUT = 120  # seconds; only reached if something hangs
STOP = "stop"  # the prompt of the task that ends a worker


def measure(bench: Bench) -> dict:
    """Time N pickups with the worker in this process, N with it in another, then an idle worker's CPU."""
    n, idle = bench.scale.pickups, bench.scale.idle_seconds
    path = os.path.join(bench.workdir, "pickup.db")
    abathur_db.open(path).close()
    rng = random.Random(f"{bench.seed}-pickup")
    progress(f"  {n} pickups by a worker thread of this process")
    same = _pickups(path, n, rng, threading.Thread, threading.Event(), queue.Queue())
    progress(f"  {n} pickups by a worker in another process")
    context = multiprocessing.get_context("spawn")
    across = _pickups(path, n, rng, context.Process, context.Event(), context.Queue())
    progress(f"  an idle worker waiting {idle} s")
    out = context.Queue()
    idler = context.Process(target=_idle, args=(path, idle, out))
    idler.start()
    cpu_s, wall_s = out.get(timeout=TIMEOUT)
    idler.join(TIMEOUT)
    for suffix in ("", "-wal", "-shm", "-lock"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return {"samples": n, "poll_ms": tasks.WAIT_POLL_SECONDS * 1000, "same_process": latency(same),
            "across_processes": latency(across),
            "idle": {"seconds": round(wall_s, 2), "cpu_s": round(cpu_s, 4), "cpu_pct": round(100 * cpu_s / wall_s, 3)}}


def _pickups(path: str, n: int, rng: random.Random, start_worker, picked, out) -> list[int]:
    """Enqueue N tasks one at a time, each once the worker waits again; return each enqueue-to-claim time (ns).

    The pause before each enqueue is drawn at random up to two poll intervals, so a
    worker of another process meets each task at a random point of its polling.
    """
    worker = start_worker(target=_worker, args=(path, picked, out))
    worker.start()
    if not picked.wait(TIMEOUT):  # the worker has its connection and is about to wait
        raise RuntimeError("the worker did not start")
    pause = 2 * tasks.WAIT_POLL_SECONDS
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        for _ in range(n):
            time.sleep(pause * (0.5 + rng.random()))  # the worker is back in its wait by then
            picked.clear()
            tasks.create(conn, "pickup", input_data={"enqueued": CLOCK()})
            if not picked.wait(TIMEOUT):
                raise RuntimeError("the waiting worker never picked a task up")
        tasks.create(conn, STOP)
        samples = out.get(timeout=TIMEOUT)
    worker.join(TIMEOUT)
    return samples


def _worker(path: str, picked, out) -> None:
    """Wait for tasks with claim_next(wait=…) and time each pickup until the stop task; send the times."""
    samples = []
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        picked.set()
        while True:
            task = tasks.claim_next(conn, wait=WAIT_SECONDS)
            if task is None:
                continue
            claimed = CLOCK()  # the system-wide monotonic clock: it compares across processes
            tasks.complete(conn, task["id"], task["lease"])
            if task["prompt"] == STOP:
                break
            samples.append(claimed - task["input_data"]["enqueued"])
            picked.set()
    out.put(samples)


def _idle(path: str, seconds: float, out) -> None:
    """Wait `seconds` in claim_next on an empty queue; send the CPU time used and the time waited."""
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        cpu, wall = time.process_time(), time.monotonic()
        assert tasks.claim_next(conn, agent_type="nobody", wait=seconds) is None
        out.put((time.process_time() - cpu, time.monotonic() - wall))


def report(figures: dict, md: Markdown) -> None:
    """Add the pickup section: enqueue-to-claim percentiles, same process and across processes, idle CPU."""
    p = figures["pickup"]
    md.heading("Pickup latency: enqueue to claim by a waiting worker")
    md.table(["worker", "samples", "p50 µs", "p99 µs", "max µs"],
             [[title, p[key]["n"], us(p[key]["median_us"]), us(p[key]["p99_us"]), us(p[key]["max_us"])]
              for title, key in (("thread of the same process", "same_process"),
                                 ("another process", "across_processes"))])
    idle = p["idle"]
    md.paragraph(
        "A worker waits in `tasks.claim_next(wait=…)`; tasks are enqueued with `tasks.create` one at a time, each",
        "once the worker waits again, after a random pause; the time runs from just before `create` to just after",
        "the claim returns. A commit of the same process wakes the waiting worker at once; another process's commit",
        f"is noticed by `PRAGMA data_version`, read every {p['poll_ms']:g} ms (`tasks.WAIT_POLL_SECONDS`). An idle",
        f"worker waiting {idle['seconds']} s on an empty queue used {idle['cpu_s'] * 1000:.1f} ms of CPU:",
        f"{idle['cpu_pct']:.2f} % of one core.")
