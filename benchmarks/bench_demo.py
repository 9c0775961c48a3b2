"""Benchmark: the README's quick start, the whole demo pipeline, timed rule by rule.

Run by hand on an otherwise idle machine (not a test)::

    .venv/bin/python benchmarks/bench_demo.py [--cores 2]

Runs what the quick start runs after the install (``snakemake --cores N`` on the default
config: the 8-subject demo cohort through training, evaluation and release) in a fresh working
folder, and prints the wall time of the whole run and of its phases (cohort and preprocessing,
training, evaluation and release, split at the first training job's start and the release
job's start), and per rule the jobs, mean and total seconds and the largest peak memory, from
the jobs' Snakemake ``benchmark:`` files. Goal (issue 13): under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from machine import (  # benchmarks/machine.py (scripts run from their folder)
    describe_cpu,
    job_seconds_and_peak_mb,
)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
JOB_START = re.compile(  # "[Sun Dec  6 17:53:51 2026]" then "rule <name>:" or "localrule <name>:"
    r"^\[(?P<stamp>\w{3} \w{3} +\d+ [\d:]+ \d{4})\]\n(?:local)?rule (?P<rule>\w+):", re.MULTILINE)
PHASE_STARTS = {"training": ("train_trunk", "train_model"),
                "evaluation and release": ("synthesize_evaluation_subject",)}


def run_demo(workdir: Path, cores: int) -> tuple[float, str]:
    """Wall seconds of the quick start's run, and its log."""
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", str(cores)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the demo run failed:\n{done.stderr[-4000:]}")
    return wall, done.stderr + done.stdout


def phase_walls(log: str, wall: float) -> dict[str, float]:
    """Seconds from the start to the first job of each phase, and from there to the next."""
    starts = [(datetime.datetime.strptime(m["stamp"], "%a %b %d %H:%M:%S %Y"), m["rule"])
              for m in JOB_START.finditer(log)]
    first = starts[0][0]
    edges = {"cohort and preprocessing": 0.0}
    for phase, rules in PHASE_STARTS.items():
        edges[phase] = min((stamp - first).total_seconds() for stamp, rule in starts
                           if rule in rules)
    names, marks = list(edges), [*edges.values(), wall]
    return {name: marks[i + 1] - marks[i] for i, name in enumerate(names)}


def rule_rows(workdir: Path) -> list[tuple[str, int, float, float, float]]:
    """(rule, jobs, mean s, total s, peak MB) from the jobs' benchmark files."""
    seconds, peaks = defaultdict(list), defaultdict(float)
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "results" / "benchmarks").parts[0].removesuffix(".tsv")
        job_seconds, peak_mb = job_seconds_and_peak_mb(tsv)
        seconds[rule].append(job_seconds)
        peaks[rule] = max(peaks[rule], peak_mb)
    rows = [(rule, len(s), sum(s) / len(s), sum(s), peaks[rule]) for rule, s in seconds.items()]
    return sorted(rows, key=lambda row: -row[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall, log = run_demo(Path(tmp), args.cores)
        phases = phase_walls(log, wall)
        rows = rule_rows(Path(tmp))
    print(f"{describe_cpu()}, {datetime.date.today()}, `snakemake --cores {args.cores}` on the "
          f"default config, {sum(row[1] for row in rows)} jobs with benchmark files\n")
    print(f"whole run: {wall / 60:.1f} min; "
          + "; ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in phases.items()))
    print("\n| rule | jobs | mean (s) | total (s) | peak RSS (MB) |\n|---|---|---|---|---|")
    for rule, jobs, mean, total, peak in rows:
        print(f"| {rule} | {jobs} | {mean:.1f} | {total:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
