"""Benchmark: one subject's preprocessing at clinical resolution, stage by stage, and the
registration against the alternatives a user would pick.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_preprocess.py [--voxel-mm 1.0] [--cores 2]

1. The workflow's per-subject chain (ADC fit, three registrations, brain mask, model grid,
   normalisation, QC montage) on one phantom patient at the paper's protocol (BTIP): a 1 mm
   isotropic CE-T1 and T1, a T2 of 1 x 1 x 3 mm axial slices and a DWI of 2 x 2 x 3 mm. It runs
   twice with ``snakemake --cores N --until ...`` in two working folders; the table gives each
   stage's seconds and peak memory (Snakemake's ``benchmark:`` files), the whole chain's wall
   time, and whether the second run's images are identical to the first's.
2. The T2-to-CE-T1 and DWI(b=0)-to-CE-T1 registrations of that patient, ours (rigid, then
   affine from it: two ANTs calls, the pyramid ending at 2 mm) against our pyramid before
   2026-12-06 (ending at the voxel size), one ANTs call with both stages, the rigid + affine
   stages of ANTs' own ``antsRegistrationSyNQuick.sh`` in one call, and antspy's
   ``AffineFast``: seconds with 1 and 2 threads, and the mean / max displacement from the
   phantom's true transform inside the brain. ``--pyramids`` replaces these by our stages in
   one call with the pyramids given (shrink factors, smoothing sigmas, iterations), to weigh
   the pyramid on one's own grid.

Prints Markdown tables with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from machine import (  # benchmarks/machine.py (scripts run from their folder)
    describe_cpu,
    job_seconds_and_peak_mb,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import ants  # noqa: E402
import nibabel as nib  # noqa: E402

from cesynth import ants_transforms, phantom, registration  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
UNTIL = ["normalise_to_model_grid", "resample_mask_to_model_grid", "plot_qc_montage"]
BTIP = {"t2_inplane_mm": 1.0, "t2_slice_mm": 3.0, "dwi_inplane_mm": 2.0, "dwi_slice_mm": 3.0}


def write_patient(bids: Path, voxel_mm: float) -> dict:
    settings = phantom.PhantomSettings(voxel_mm=voxel_mm,
                                       **{k: v * voxel_mm for k, v in BTIP.items()})
    plan = phantom.make_cohort(bids, 1, seed=11, n_set_b=0, settings=settings)
    return phantom.subject_paths(bids, plan["participant_id"].iloc[0])


def run_chain(bids: Path, workdir: Path, cores: int) -> float:
    """Wall seconds of the per-subject chain through the workflow."""
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", str(cores), "--config", "demo={enabled: false}", f"bids_dir={bids}",
               "--until", *UNTIL]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def stage_rows(workdir: Path) -> list[tuple[str, float, float]]:
    """(job, seconds, peak MB) from the jobs' Snakemake benchmark files."""
    rows = []
    for tsv in sorted((workdir / "results" / "benchmarks").rglob("*.tsv")):
        rows.append((f"{tsv.parent.name} {tsv.stem}", *job_seconds_and_peak_mb(tsv)))
    return rows


def same_images(first: Path, second: Path) -> tuple[int, list[str]]:
    """How many NIfTI outputs were compared, and those whose voxels differ."""
    differ, images = [], sorted((first / "results" / "preproc").rglob("*.nii.gz"))
    for image in images:
        other = second / image.relative_to(first)
        if not np.array_equal(np.asarray(nib.load(image).dataobj),
                              np.asarray(nib.load(other).dataobj)):
            differ.append(image.name)
    return len(images), differ


# ------------------------------------------------------------------ registration alternatives


def synquick_stages(fixed: str, moving: str, prefix: str, seed: int) -> list[str]:
    """The rigid and affine stages of antsRegistrationSyNQuick.sh (-t a), one antsRegistration
    call: MI 32 bins, 25 % regular sampling, 1000x500x250x0 iterations at 8x4x2x1 shrink."""
    stage = ["--convergence", "[1000x500x250x0,1e-6,10]", "--shrink-factors", "8x4x2x1",
             "--smoothing-sigmas", "3x2x1x0vox"]
    metric = f"MI[{fixed},{moving},1,32,Regular,0.25]"
    return ["--dimensionality", "3", "--float", "0", "--output", f"[{prefix}]",
            "--interpolation", "Linear", "--winsorize-image-intensities", "[0.005,0.995]",
            "--initial-moving-transform", f"[{fixed},{moving},1]", "--random-seed", str(seed),
            "--metric", metric, "--transform", "Rigid[0.1]", *stage,
            "--metric", metric, "--transform", "Affine[0.1]", *stage]


def ours_in_one_call(fixed: str, moving: str, prefix: str, seed: int,
                     pyramid: str | None = None) -> list[str]:
    """Our two stages (registration.method_record and its pyramid) as one antsRegistration
    call, in single precision as antspy's ``ants.registration`` runs them; ``pyramid``
    (``SHRINK:SIGMAS:ITERATIONS``, e.g. ``8x4x2:3x2x1:300x100x20``) replaces ours."""
    record = registration.method_record()
    shrink, sigmas = registration.pyramid(ants.image_header_info(fixed)["spacing"])
    levels = ["x".join(map(str, shrink)), "x".join(map(str, sigmas)),
              "x".join(map(str, record["iterations"]))]
    if pyramid is not None:
        levels = pyramid.split(":")
    metric = (f"MI[{fixed},{moving},1,{record['histogram_bins']},Regular,"
              f"{record['sampling_rate']}]")
    stage = ["--convergence", f"[{levels[2]},1e-6,10]", "--shrink-factors", levels[0],
             "--smoothing-sigmas", levels[1] + "vox"]
    return ["--dimensionality", "3", "--float", "1", "--output", f"[{prefix}]",
            "--interpolation", "Linear", "--initial-moving-transform", f"[{fixed},{moving},1]",
            "--random-seed", str(seed), "--metric", metric, "--transform", "Rigid[0.25]", *stage,
            "--metric", metric, "--transform", "Affine[0.25]", *stage]


def ours_two_calls(fixed: ants.ANTsImage, moving: ants.ANTsImage, prefix: str,
                   finest_at_voxel: bool = False) -> Path:
    """What cesynth.registration does: rigid, then affine started from it (two ANTs calls);
    ``finest_at_voxel``: its pyramid before 2026-12-06 (4, 2, 1 on any grid, so the finest
    level is the fixed image's own voxel size)."""
    shrink, sigmas = registration.pyramid(fixed.spacing)
    if finest_at_voxel:
        shrink, sigmas = registration._SHRINK_FACTORS, registration._SMOOTHING_SIGMAS
    work = Path(f"{prefix}stages")  # one per alternative; the next modality's overwrites it
    work.mkdir(exist_ok=True)
    threads = int(os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1"))
    with registration._ants_settings(threads, seed=0):  # the workflow's seed, as the 1-call rows
        return registration.run_stages(fixed, moving, work, registration._STAGES, shrink, sigmas)


def run_alternative(name: str, fixed: Path, moving: Path, work: Path) -> tuple[Path, float]:
    """Register ``moving`` to ``fixed`` one way: the ANTs .mat (fixed -> moving), seconds."""
    prefix = str(work / f"{len(name)}_{abs(hash(name)) % 10000}_")
    fixed_image, moving_image = ants.image_read(str(fixed)), ants.image_read(str(moving))
    start = time.perf_counter()
    if name in ALTERNATIVES[:2]:
        xfm = ours_two_calls(fixed_image, moving_image, prefix, name == ALTERNATIVES[1])
    elif name == ALTERNATIVES[4]:
        found = ants.registration(fixed_image, moving_image, type_of_transform="AffineFast",
                                  outprefix=prefix)
        xfm = Path(found["fwdtransforms"][0])
    else:
        if name.startswith(PYRAMID):
            args = ours_in_one_call(str(fixed), str(moving), prefix, 1, name[len(PYRAMID):])
        elif name == ALTERNATIVES[2]:
            args = ours_in_one_call(str(fixed), str(moving), prefix, seed=1)
        else:
            args = synquick_stages(str(fixed), str(moving), prefix, seed=1)
        ants.registration(args, None)
        xfm = Path(f"{prefix}0GenericAffine.mat")
    return xfm, time.perf_counter() - start


ALTERNATIVES = ["ours: rigid, then affine (2 calls), finest level 2 mm",
                "ours before: the same, finest level the voxel",
                "ours: rigid + affine in 1 call", "SyNQuick rigid + affine (1 call)",
                "antspy AffineFast"]
PYRAMID = "ours in 1 call, pyramid "  # + SHRINK:SIGMAS:ITERATIONS (--pyramids)


def b0_image(paths: dict, work: Path) -> Path:
    """The DWI's mean b=0 volume as its own NIfTI (what the workflow registers)."""
    volumes = registration.b0_volumes(paths["dwi"], paths["bval"])
    dwi = nib.load(paths["dwi"])
    b0 = np.asarray(dwi.dataobj)[..., volumes].mean(axis=-1).astype(np.float32)
    out = work / "b0.nii.gz"
    nib.save(nib.Nifti1Image(b0, dwi.affine), out)
    return out


def registration_rows(paths: dict, work: Path, threads: list[int],
                      names: list[str]) -> Iterator[str]:
    truth = json.loads(Path(paths["transforms"]).read_text())
    moving = {"T2w": Path(paths["T2w"]), "dwi": b0_image(paths, work)}
    for modality, image in moving.items():
        for name in names:
            for count in threads:
                yield _timed_alternative(name, modality, image, paths, truth, work, count)


def _timed_alternative(name: str, modality: str, image: Path, paths: dict, truth: dict,
                       work: Path, threads: int) -> str:
    """One registration in a fresh process (ITK fixes its thread count at first use)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_preprocess as b; xfm, s = b.run_alternative({name!r}, "
            f"b.Path({str(paths['ceT1w'])!r}), b.Path({str(image)!r}), b.Path({str(work)!r})); "
            f"print(xfm, s)")
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env=env, cwd=Path(__file__).parent)
    xfm, seconds = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    error = ants_transforms.displacement_error_mm(xfm, np.array(truth[f"ceT1w_to_{modality}"]),
                                                  paths["brain_mask"])
    return (f"| {modality} | {name} | {threads} | {float(seconds):.1f} | "
            f"{error['mean_mm']:.2f} | {error['max_mm']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-mm", type=float, default=1.0)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-chain", action="store_true")
    parser.add_argument("--skip-alternatives", action="store_true",
                        help="only the chain (table 1), not the registration table")
    parser.add_argument("--pyramids", nargs="+", metavar="SHRINK:SIGMAS:ITERATIONS",
                        help="the registration table holds our stages in one call with each "
                             "of these pyramids (e.g. 8x4x2:3x2x1:300x100x20) instead")
    args = parser.parse_args()
    print(f"{describe_cpu()}, {datetime.date.today()}, CE-T1 {args.voxel_mm} mm, T2 "
          f"{BTIP['t2_inplane_mm'] * args.voxel_mm}x{BTIP['t2_inplane_mm'] * args.voxel_mm}x"
          f"{BTIP['t2_slice_mm'] * args.voxel_mm} mm, DWI {BTIP['dwi_inplane_mm'] * args.voxel_mm}"
          f"x{BTIP['dwi_inplane_mm'] * args.voxel_mm}x{BTIP['dwi_slice_mm'] * args.voxel_mm} mm")
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        paths = write_patient(bids, args.voxel_mm)
        shape = nib.load(paths["ceT1w"]).shape
        print(f"CE-T1 grid {shape}, T2 {nib.load(paths['T2w']).shape}, "
              f"DWI {nib.load(paths['dwi']).shape}\n")
        if not args.skip_chain:
            walls = [run_chain(bids, Path(tmp) / f"run{n}", args.cores) for n in (1, 2)]
            print("| job | seconds | peak RSS (MB) |\n|---|---|---|")
            for job, seconds, rss in stage_rows(Path(tmp) / "run1"):
                print(f"| {job} | {seconds:.1f} | {rss:.0f} |")
            compared, differ = same_images(Path(tmp) / "run1", Path(tmp) / "run2")
            print(f"\nwhole chain, `snakemake --cores {args.cores}`: {walls[0]:.0f} s, rerun "
                  f"{walls[1]:.0f} s; {compared} images compared, "
                  f"{'all identical' if not differ else 'differ: ' + ', '.join(differ)}\n")
        if args.skip_alternatives:
            return
        print("| moving | registration | threads | seconds | mean error (mm) | max error (mm) |")
        print("|---|---|---|---|---|---|")
        work = Path(tmp) / "registrations"
        work.mkdir()
        names = [PYRAMID + spec for spec in args.pyramids] if args.pyramids else ALTERNATIVES
        for row in registration_rows(paths, work, args.threads, names):
            print(row, flush=True)


if __name__ == "__main__":
    main()
