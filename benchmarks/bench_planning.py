"""Benchmark: planning (`snakemake -n`) of the whole workflow for a cohort of N subjects, against
Snakemake planning a trivial DAG with as many jobs.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_planning.py [--subjects 100 1000] [--reps 3]

For each N, writes a BIDS tree of zero-byte images (T1, CE-T1, T2, DWI with its gradient files;
every fourth subject with a tumor mask, so it is Set B), plans the workflow on it with the
default configuration and its own results folder, and counts the planned jobs; then plans a
Snakefile of one rule with that many independent jobs. Prints a Markdown row per N: the median
wall time of ``--reps`` runs of each and their ratio (the issue's goal: at most 1.5).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
ANAT = ("T1w", "ce-gadolinium_T1w", "T2w")
TRIVIAL_SNAKEFILE = """\
rule all:
    input: expand("out/{{i}}.txt", i=range({n_jobs}))

rule make:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""


def write_bids(root: Path, n_subjects: int) -> None:
    """A BIDS tree of zero-byte images; every fourth subject has a tumor mask (Set B)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "planning benchmark", "BIDSVersion": "1.8.0"}))
    rows = ["participant_id"]
    for n in range(1, n_subjects + 1):
        label = f"{n:04d}"
        rows.append(f"sub-{label}")
        anat, dwi = root / f"sub-{label}" / "anat", root / f"sub-{label}" / "dwi"
        anat.mkdir(parents=True)
        dwi.mkdir()
        for suffix in ANAT:
            (anat / f"sub-{label}_{suffix}.nii.gz").touch()
        for ext in ("nii.gz", "bval", "bvec"):
            (dwi / f"sub-{label}_dwi.{ext}").touch()
        if n % 4 == 0:
            mask = root / "derivatives" / "tumor_masks" / f"sub-{label}" / "anat"
            mask.mkdir(parents=True)
            (mask / f"sub-{label}_desc-tumor_mask.nii.gz").touch()
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")


def time_dry_run(args: list[str], cwd: Path, reps: int) -> tuple[float, int]:
    """Median wall seconds of ``snakemake -n`` with ``args``, and the number of planned jobs."""
    walls, n_jobs = [], 0
    for _ in range(reps):
        start = time.perf_counter()
        result = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", *args], cwd=cwd,
                                capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - start)
        n_jobs = int(re.search(r"^total\s+(\d+)", result.stdout, re.MULTILINE).group(1))
    return statistics.median(walls), n_jobs


def bench(n_subjects: int, reps: int, tmp: Path) -> str:
    bids = tmp / f"bids-{n_subjects}"
    write_bids(bids, n_subjects)
    workflow, n_jobs = time_dry_run(
        ["-s", str(REPO / "Snakefile"), "--directory", str(tmp / f"work-{n_subjects}"),
         "--config", "demo={enabled: false}", f"bids_dir={bids}"], tmp, reps)
    trivial_dir = tmp / f"trivial-{n_subjects}"
    trivial_dir.mkdir()
    (trivial_dir / "Snakefile").write_text(TRIVIAL_SNAKEFILE.format(n_jobs=n_jobs - 1))
    trivial, _ = time_dry_run([], trivial_dir, reps)
    return (f"| {n_subjects} | {n_jobs} | {workflow:.1f} | {trivial:.1f} | "
            f"{workflow / trivial:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"{describe_cpu()}, {datetime.date.today()}, median of {args.reps}")
    print("| subjects | jobs | workflow `-n` (s) | trivial DAG `-n` (s) | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n_subjects in args.subjects:
            print(bench(n_subjects, args.reps, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
