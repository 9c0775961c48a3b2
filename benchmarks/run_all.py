"""Run every benchmark, one after the other, and print their Markdown output.

Run by hand on an otherwise idle machine (not a test; about two hours on 2 CPU cores)::

    .venv/bin/python benchmarks/run_all.py [--only startup planning ...] [--device cuda]

Each benchmark is its own script (see its docstring for what it measures and its options);
this runs them with the settings `benchmarks/RESULTS.md` reports. The ADC benchmark needs
MRtrix3's ``dwi2adc`` (``apt install mrtrix3``) for its peer column; the paper-grid inference
on CPU times a few windows only (``--max-windows``) and scales them to the volume.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = {
    "startup": ["bench_startup.py", "--reps", "7", "--runs", "200"],
    "planning": ["bench_planning.py", "--subjects", "100", "1000", "--reps", "3"],
    "preprocess": ["bench_preprocess.py", "--voxel-mm", "1.0", "--cores", "2"],
    "adc": ["bench_adc.py", "--reps", "5", "--threads", "2"],
    "brainmask": ["bench_brainmask.py", "--subjects", "3", "--voxel-mm", "1.0",
                  "--thick", "1", "1", "5", "--threads", "2"],
    "sampler": ["bench_sampler.py", "--subjects", "3", "--patches", "300", "--reps", "3"],
    "train_step": ["bench_train_step.py", "--profiles", "demo"],
    "inference": ["bench_inference.py", "--profiles", "demo", "paper", "--max-windows", "3"],
    "status": ["bench_status.py", "--scans", "400", "--reps", "5"],
    "scheduler": ["bench_scheduler.py", "--reps", "3"],
    "demo": ["bench_demo.py", "--cores", "2"],
}
GPU_RUNS = {  # what runs again with --device cuda
    "train_step": ["--profiles", "demo", "paper", "--device", "cuda"],
    "inference": ["--profiles", "demo", "paper", "--device", "cuda"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHMARKS:
        command = [sys.executable, *BENCHMARKS[name]]
        if args.device == "cuda" and name in GPU_RUNS:
            command = [sys.executable, BENCHMARKS[name][0], *GPU_RUNS[name]]
        print(f"\n## {name}: `{' '.join(['python', *command[1:]])}`\n", flush=True)
        if subprocess.run(command, cwd=HERE).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"benchmarks that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
