"""Benchmark the brain-mask methods on phantom subjects: Dice against the truth, and seconds.

Run by hand (not a test)::

    python benchmarks/bench_brainmask.py [--subjects 3] [--voxel-mm 1.0] [--threads N]

Prints a Markdown table with the machine (CPU count, platform) and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to, resample_to_output

from cesynth import brainmask as bm
from cesynth import phantom
from cesynth.io import load_nifti


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--voxel-mm", type=float, default=1.0, help="phantom voxel size")
    parser.add_argument("--thick", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="also run on images resampled to these voxel sizes (e.g. 1 1 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--methods", nargs="*", default=None, help="default: all available")
    return parser.parse_args()


def subject_images(cohort: Path, sub: str, zooms: tuple[float, ...] | None
                   ) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A subject's CE-T1 and true mask, optionally resampled to ``zooms`` (linear, >= 0.5)."""
    image = load_nifti(cohort / sub / "anat" / f"{sub}_ce-gadolinium_T1w.nii.gz")
    truth = nib.load(cohort / "derivatives" / "phantom" / sub
                     / f"{sub}_space-ceT1w_desc-brain_mask.nii.gz")
    if zooms is not None:
        image = resample_to_output(image, voxel_sizes=zooms, order=1)
        truth = resample_from_to(truth, image, order=1)
    return image, np.asarray(truth.dataobj) >= 0.5


def main() -> None:
    """Build the cohort, run every method on every subject and print the table."""
    args = parse_args()
    methods = args.methods or bm.available_methods()
    grids: list[tuple[float, ...] | None] = [None] + ([tuple(args.thick)] if args.thick else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-brainmask-") as tmp:
        cohort = Path(tmp)
        phantom.make_cohort(cohort, args.subjects, seed=0,
                            settings=phantom.PhantomSettings(voxel_mm=args.voxel_mm))
        subjects = sorted(p.name for p in cohort.glob("sub-*") if p.is_dir())
        for method in methods:
            bm.brain_mask(subject_images(cohort, subjects[0], None)[0], method,
                          threads=args.threads)  # warm-up: model load, numba compilation
            for zooms in grids:
                for sub in subjects:
                    image, truth = subject_images(cohort, sub, zooms)
                    mask, info = bm.brain_mask(image, method, threads=args.threads)
                    grid = "x".join(f"{z:g}" for z in image.header.get_zooms()[:3])
                    rows.append((method, sub, grid, bm.dice(mask, truth), info["seconds"]))
                    print(f"{method} {sub} {grid}: Dice {rows[-1][3]:.4f}, {info['seconds']} s",
                          flush=True)
    print_table(rows, args)


def print_table(rows: list[tuple], args: argparse.Namespace) -> None:
    """Print the results as Markdown with the machine and date."""
    print(f"\nMachine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, "
          f"Python {platform.python_version()}; threads={args.threads}; "
          f"date {datetime.date.today().isoformat()}; phantom voxel {args.voxel_mm} mm\n")
    print("| method | subject | voxel (mm) | Dice | seconds |")
    print("|---|---|---|---|---|")
    for method, sub, grid, score, seconds in rows:
        print(f"| {method} | {sub} | {grid} | {score:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
