"""Benchmark: `cesynth status` (cesynth.status.write_status) on a results folder of N scans.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_status.py [--scans 400] [--reps 5]

Builds a results folder in which every scan's per-scan jobs are done (ingest reports, empty
output files and logs at the rule paths the table follows) and times the refresh the workflow
runs at the end of every run, median of ``--reps``, wall and CPU time. Prints a Markdown row.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cesynth import ingest_report, status  # noqa: E402

MODELS = ["default", "floor-t1"]
MODALITIES = ("T1w", "ceT1w", "T2w", "dwi")


def build(results: Path, n_scans: int) -> None:
    for n in range(n_scans):
        scan_id = f"{n:04d}"
        report = {"scan_id": scan_id, "participant": scan_id, "session": None, "set": "A",
                  "status": "included", "modalities": list(MODALITIES), "missing": [],
                  "files": {m: {"file": f"sub-{scan_id}_{m}.nii.gz"} for m in MODALITIES}}
        ingest_report.write_scan_report(report, results / "qc" / "ingest" / f"sub-{scan_id}.json")
        scan = status.ScanInfo(scan_id, scan_id, None, "A", "test", MODALITIES)
        for jobs in status.stage_jobs(scan, MODELS).values():
            for job in jobs:
                outputs, log = job.paths(results)
                for path in map(Path, outputs):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                Path(log).parent.mkdir(parents=True, exist_ok=True)
                Path(log).write_text(f"INFO cesynth: done: {job.rule}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=400)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        build(results, args.scans)
        walls, cpus = [], []
        for _ in range(args.reps):
            wall, cpu = time.perf_counter(), time.process_time()
            table = status.write_status(results, models=MODELS)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        done = int((table["state"] == "done").sum())
    print(f"| {describe_cpu()} | {datetime.date.today()} | {args.scans} | {len(table)} "
          f"({done} done) | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} |")


if __name__ == "__main__":
    main()
