"""Benchmark: the fixed cost of a pipeline job, and what sending its spooled MLflow run costs.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_startup.py [--reps 7] [--runs 200]

Times, median of ``--reps`` fresh processes each (wall and CPU of the child):

- ``python -c pass``: the interpreter alone, the floor;
- a job that does no work, its run spooled (``cesynth.jobs.run_job``, what short jobs do);
- the same job with ``live=True`` (imports MLflow and opens its run in the SQLite store, what
  every job did before the spool and what training and the release still do);

then the cost per run of sending ``--runs`` spooled runs to a fresh SQLite store in one process
(what the workflow does when it starts and ends). Prints Markdown rows.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from cesynth import run_spool, tracking  # noqa: E402
from cesynth.jobs import ENV_RESULTS_DIR, ENV_TRACKING_URI, Job, run_job  # noqa: E402

NO_WORK_JOB = """
import sys
from cesynth.jobs import Job, run_job
run_job(Job("no_work", {"subject": "01"}), lambda: None, live=sys.argv[1] == "live")
"""


def time_child(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_child(command: list[str], env: dict[str, str], reps: int) -> tuple[float, float]:
    times = [time_child(command, env) for _ in range(reps)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def job_environment(folder: Path) -> dict[str, str]:
    uri = tracking.default_tracking_uri(folder / "results")
    tracking.init_store(uri)  # the workflow creates the store before any job starts
    return {**os.environ, "PYTHONPATH": str(SRC), ENV_TRACKING_URI: uri,
            ENV_RESULTS_DIR: str(folder / "results")}


def send_cost(folder: Path, runs: int) -> tuple[float, float]:
    """Seconds to spool ``runs`` runs in this process, and to send them, per run."""
    os.environ.update(job_environment(folder))
    spool = run_spool.spool_dir(folder / "results")
    start = time.perf_counter()
    for index in range(runs):
        run_job(Job("no_work", {"subject": f"{index:04d}"}), lambda: {"voxels": 1.0})
    spooled = (time.perf_counter() - start) / runs
    start = time.perf_counter()
    assert run_spool.send_spool(spool) == runs
    return spooled, (time.perf_counter() - start) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    today, machine = datetime.date.today(), describe_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        env = job_environment(Path(tmp) / "jobs")
        rows = {
            "`python -c pass` (floor)": [sys.executable, "-c", "pass"],
            "job, no work, run spooled (short jobs)": [sys.executable, "-c", NO_WORK_JOB,
                                                       "spooled"],
            "job, no work, run live in SQLite (training, release)": [
                sys.executable, "-c", NO_WORK_JOB, "live"],
        }
        for name, command in rows.items():
            wall, cpu = median_child(command, env, args.reps)
            print(f"| {machine} | {today} | {name} | {wall:.2f} | {cpu:.2f} |")
        spooled, sent = send_cost(Path(tmp) / "send", args.runs)
    print(f"\nper run, {args.runs} runs in one process: spooled {spooled * 1000:.1f} ms, "
          f"sent {sent * 1000:.1f} ms (MLflow import included once)")


if __name__ == "__main__":
    main()
