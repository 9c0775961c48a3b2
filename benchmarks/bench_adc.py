"""Benchmark: cesynth's ADC fit against MRtrix3 ``dwi2adc`` on a 192x256x192 volume.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_adc.py [--reps 5] [--threads 2]

Two DWI shapes: 3 volumes (b = 0, 500, 1000, as FIELD-NOTES measured) and 7 volumes (1 b0 +
3 directions per shell). For each it times, median of ``--reps`` interleaved rounds:

- ``ours (array)``: the fit on an array already in memory (:func:`cesynth.adc.fit_dwi_shells`);
- ``ours (file)``: :func:`cesynth.adc.fit_adc_file`, uncompressed NIfTI in and out;
- ``dwi2adc (file)``: ``dwi2adc -nthreads N`` on the same files (it reads and writes too).

It also reports the median |ours - dwi2adc| inside the phantom brain (``weighting="volume"``, the
fit dwi2adc does; the two are the same fit for the 3-volume shape) and prints Markdown rows.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

SHAPE = (192, 256, 192)
LAYOUTS = {
    "3 vol (b0, 500, 1000)": [0, 500, 1000],
    "7 vol (1 b0 + 3 dirs x 2)": [0, 500, 500, 500, 1000, 1000, 1000],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if shutil.which("dwi2adc") is None:
        raise SystemExit("dwi2adc not found (apt-get install mrtrix3)")

    print(f"| machine | date | DWI | ours, array (s) | ours, file (s) | dwi2adc -nthreads "
          f"{args.threads}, file (s) | median abs diff (mm2/s) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, bvals in LAYOUTS.items():
            row = bench_layout(Path(tmp), bvals, args.reps, args.threads)
            print(f"| {describe_cpu()} | {datetime.date.today()} | {name} | {row['array']:.3f} | "
                  f"{row['file']:.3f} | {row['mrtrix']:.3f} | {row['diff']:.2e} |", flush=True)


def bench_layout(folder: Path, bvals: list[int], reps: int, threads: int) -> dict[str, float]:
    """Write one phantom DWI and time the three ways of fitting it."""
    import nibabel as nib
    import numpy as np

    from cesynth.adc import fit_adc_file, fit_dwi_shells, group_shells

    dwi, brain = phantom(np.asarray(bvals, dtype=float))
    paths = {name: folder / f"{name}" for name in
             ("dwi.nii", "dwi.bval", "dwi.bvec", "ours.nii", "mrtrix.nii")}
    nib.save(nib.Nifti1Image(dwi, np.eye(4)), paths["dwi.nii"])
    np.savetxt(paths["dwi.bval"], np.atleast_2d(bvals), fmt="%g")
    np.savetxt(paths["dwi.bvec"], bvecs(bvals), fmt="%g")
    shells = group_shells(np.asarray(bvals, dtype=float))
    bvals_arr = np.asarray(bvals, dtype=float)
    loaded = nib.load(paths["dwi.nii"]).get_fdata(dtype=np.float32)  # NIfTI (Fortran) layout

    timings = timed_interleaved({
        "array": lambda: fit_dwi_shells(loaded, bvals_arr, shells, weighting="volume"),
        "file": lambda: fit_adc_file(paths["dwi.nii"], paths["dwi.bval"], paths["dwi.bvec"],
                                     paths["ours.nii"], weighting="volume", max_adc=1.0),
        "mrtrix": lambda: subprocess.run(
            ["dwi2adc", "-quiet", "-force", "-nthreads", str(threads), "-fslgrad",
             str(paths["dwi.bvec"]), str(paths["dwi.bval"]), str(paths["dwi.nii"]),
             str(paths["mrtrix.nii"])], check=True),
    }, reps)
    ours = np.asanyarray(nib.load(paths["ours.nii"]).dataobj)
    mrtrix = np.asanyarray(nib.load(paths["mrtrix.nii"]).dataobj)[..., 1]
    timings["diff"] = float(np.median(np.abs(ours[brain] - mrtrix[brain])))
    return timings


def phantom(bvals):
    """Ellipsoidal 'brain' (ADC 0.7-3e-3 mm2/s, S0 1000) in Rician noise (sigma 20)."""
    import numpy as np

    rng = np.random.default_rng(0)
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    radius2 = sum(((g - n / 2) / (0.42 * n)) ** 2 for g, n in zip(grid, SHAPE, strict=True))
    brain = radius2 < 1.0
    adc = np.where(radius2 < 0.3, 3.0e-3, np.where(radius2 < 0.6, 0.85e-3, 0.75e-3))
    adc = adc.astype(np.float32) * brain
    dwi = np.empty(SHAPE + (len(bvals),), dtype=np.float32)
    for i, b in enumerate(bvals):
        clean = np.where(brain, np.float32(1000.0) * np.exp(np.float32(-b) * adc), 0)
        real = clean + rng.normal(0, 20, SHAPE).astype(np.float32)
        imag = rng.normal(0, 20, SHAPE).astype(np.float32)
        dwi[..., i] = np.hypot(real, imag)
    return dwi, brain


def bvecs(bvals):
    """Unit x, y, z directions cycling within each shell; zero for b = 0."""
    import numpy as np

    axes = np.eye(3)
    rows, count = [], {}
    for b in bvals:
        count[b] = count.get(b, -1) + 1
        rows.append(np.zeros(3) if b == 0 else axes[count[b] % 3])
    return np.array(rows).T


def timed_interleaved(funcs: dict, reps: int) -> dict[str, float]:
    """Median wall time of each function over ``reps`` rounds (after a warm-up round).

    The functions take turns within each round, so a busy machine slows them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for round_ in range(reps + 1):
        for name, func in funcs.items():
            start = time.perf_counter()
            func()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


if __name__ == "__main__":
    main()
