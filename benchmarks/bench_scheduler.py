"""Benchmark: Snakemake's own CPU while a long job holds every core and other jobs wait.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_scheduler.py [--quick-jobs 150] [--reps 3]

A toy workflow on 2 cores: ``--quick-jobs`` one-line jobs, then a 2-thread job that sleeps
30 s while four 1-thread jobs are ready and wait for it (as evaluation jobs wait for a
training). Snakemake 9 re-runs its scheduling loop on a rate-limiter timer after each pass that
leaves ready jobs waiting, and each finished job starts one more such timer chain, so the
scheduler's CPU grows with the jobs already finished. Runs the workflow with Snakemake's
default ``--max-jobs-per-timespan 100/1s`` and with the value of ``profiles/default``,
alternating, and prints the median CPU seconds (Snakemake and its jobs) and wall seconds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SNAKEFILE = """
QUICK = range({quick_jobs})

rule all:
    input: "long.done", expand("late/{{i}}.txt", i=range(4))

rule quick:
    output: "quick/{{i}}.txt"
    shell: "touch {{output}}"

rule long:
    input: expand("quick/{{i}}.txt", i=QUICK)
    output: "long.done"
    threads: 2
    priority: 10
    shell: "sleep 30; touch {{output}}"

rule late:
    input: expand("quick/{{i}}.txt", i=QUICK)
    output: "late/{{i}}.txt"
    shell: "touch {{output}}"
"""


def profile_timespan() -> str:
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    return profile["max-jobs-per-timespan"]


def run_once(snakefile: str, timespan: str) -> tuple[float, float]:
    """(CPU seconds of Snakemake and its jobs, wall seconds) of one run in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Snakefile").write_text(snakefile)
        start = time.perf_counter()
        process = subprocess.Popen([SNAKEMAKE, "--cores", "2", "-q", "--max-jobs-per-timespan",
                                    timespan], cwd=tmp, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"the toy workflow failed with --max-jobs-per-timespan {timespan}")
        return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick-jobs", type=int, default=150)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    snakefile = SNAKEFILE.format(quick_jobs=args.quick_jobs)
    settings = {"Snakemake's default": "100/1s", "profiles/default": profile_timespan()}
    measured = {name: [] for name in settings}
    for _ in range(args.reps):
        for name, timespan in settings.items():
            measured[name].append(run_once(snakefile, timespan))
    print(f"{describe_cpu()}, {datetime.date.today()}, {args.quick_jobs} quick jobs, then a "
          f"30 s 2-thread job with 4 jobs waiting; median of {args.reps}\n")
    print("| --max-jobs-per-timespan | CPU (s) | wall (s) |\n|---|---|---|")
    for name, timespan in settings.items():
        cpu = statistics.median(run[0] for run in measured[name])
        wall = statistics.median(run[1] for run in measured[name])
        print(f"| {timespan} ({name}) | {cpu:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
