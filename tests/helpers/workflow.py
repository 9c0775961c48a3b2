"""Running the repository's workflow from tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CESYNTH = str(Path(sys.executable).parent / "cesynth")  # the installed console script


def workflow_environment(tracking_uri: str | None = None) -> dict[str, str]:
    """This process's environment for a workflow run, with MLFLOW_TRACKING_URI set only where
    ``tracking_uri`` is given: an in-process MLflow call of an earlier test may have left the
    variable naming its own store, and the variable wins over the workflow's default store."""
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if tracking_uri is not None:
        environment["MLFLOW_TRACKING_URI"] = tracking_uri
    return environment


def snakemake(workdir: Path, *args: str, check: bool = True, tracking_uri: str | None = None,
              environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as working directory, its MLflow store the
    workflow's default unless ``tracking_uri`` is given; ``environment`` adds variables."""
    command = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                            env={**workflow_environment(tracking_uri), **(environment or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout}\n{result.stderr}")
    return result


def dry_run_jobs(workdir: Path, *args: str, tracking_uri: str | None = None) -> dict[str, int]:
    """Job counts per rule of a dry run (``--dry-run --quiet rules`` prints the table)."""
    result = snakemake(workdir, "--dry-run", "--quiet", "rules", *args, tracking_uri=tracking_uri)
    counts: dict[str, int] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def dry_run_job_paths(workdir: Path, *args: str) -> list[dict]:
    """Every job of a dry run: rule, outputs, log and wildcards, as Snakemake prints them."""
    out = snakemake(workdir, "--dry-run", *args).stdout
    jobs, job = [], None
    for line in out.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint ")):
            job = {"rule": line.split()[1].rstrip(":"), "outputs": [], "log": None,
                   "wildcards": {}}
            jobs.append(job)
        elif job is not None and stripped.startswith("output: "):
            job["outputs"] = stripped.removeprefix("output: ").split(", ")
        elif job is not None and stripped.startswith("log: "):
            job["log"] = stripped.removeprefix("log: ")
        elif job is not None and stripped.startswith("wildcards: "):
            pairs = stripped.removeprefix("wildcards: ").split(", ")
            job["wildcards"] = dict(pair.split("=", 1) for pair in pairs)
    return jobs


_JOB_START = re.compile(r"^(?:local)?rule \S+:$")


def _job_blocks(log: str):
    """(event, job ID, threads) in log order: ``start`` for each ``rule X:`` block (threads 1
    when the block names none), ``end`` for each ``Finished jobid: N``."""
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if _JOB_START.match(line):
            fields = {}
            for detail in lines[index + 1:]:
                if not detail.startswith("    "):
                    break
                key, _, value = detail.strip().partition(": ")
                fields[key] = value
            yield "start", fields["jobid"], int(fields.get("threads", 1))
        elif line.startswith("Finished jobid: "):
            yield "end", line.split()[2], 0


def peak_threads(log: str) -> int:
    """The most threads the running jobs of a Snakemake run's log held at one time."""
    running: dict[str, int] = {}
    peak = 0
    for event, job, threads in _job_blocks(log):
        if event == "start":
            running[job] = threads
            peak = max(peak, sum(running.values()))
        else:
            running.pop(job, None)
    return peak
