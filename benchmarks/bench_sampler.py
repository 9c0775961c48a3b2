"""Benchmark: 3-slice patch throughput of the training data loader on the paper grid.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_sampler.py [--subjects 3] [--patches 300] [--reps 3]

Writes synthetic model-grid subjects (192x256x192, RAS: 192 slices of 256x192, three inputs and
a target), caches them with :func:`cesynth.cache.cache_subject`, then times whole epochs of
:func:`cesynth.data.make_loader` (batch 3) with 0, 1 and 2 workers, with and without
augmentation (flip + jitter). One warm-up epoch per setting runs first, so the cache files are in
the page cache as they are during training. Prints patches per second (median of ``--reps``
epochs, worker start-up included) as Markdown rows. Goal: >= 1000 patches/s.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

from cesynth.cache import cache_subject
from cesynth.data import Augmentation, PatchDataset, make_loader
from cesynth.io import save_nifti, write_json

GRID = (192, 256, 192)  # RAS (x, y, z)
MODALITIES = ("T1w", "T2w", "adc", "ceT1w")
WORKERS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--patches", type=int, default=300, help="patches per subject per epoch")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        caches = [write_subject(Path(tmp), f"sub-{i:02d}", i) for i in range(args.subjects)]
        print("| machine | date | workers | patches/s | patches/s, flip + jitter |")
        print("|---|---|---|---|---|")
        for workers in WORKERS:
            rates = [measure(caches, workers, augment, args.patches, args.reps)
                     for augment in (False, True)]
            print(f"| {describe_cpu()} | {datetime.date.today()} | {workers} | {rates[0]:.0f} | "
                  f"{rates[1]:.0f} |", flush=True)


def write_subject(folder: Path, name: str, seed: int) -> Path:
    """Write one synthetic subject as model-grid NIfTIs and cache it; returns the cache JSON."""
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    paths = {m: save_nifti(rng.random(GRID, dtype=np.float32), affine,
                           folder / f"{name}_space-model_desc-norm_{m}.nii")
             for m in MODALITIES}
    mask = np.zeros(GRID, dtype=np.uint8)
    mask[20:172, 20:236, 10:180] = 1
    mask_path = save_nifti(mask, affine, folder / f"{name}_space-model_desc-brain_mask.nii",
                           dtype=np.uint8)
    sidecar = write_json({"foreground_slices": [10, 179]},
                         folder / f"{name}_space-model_desc-brain_mask.json")
    json_path = cache_subject(paths, mask_path, sidecar, folder / "cache")
    for path in [*paths.values(), mask_path]:
        path.unlink()  # keep only the cache on disk
    return json_path


def measure(caches: list[Path], workers: int, augment: bool, patches: int, reps: int) -> float:
    """Median patches per second over ``reps`` epochs after one warm-up epoch."""
    dataset = PatchDataset(caches, patches_per_subject=patches, seed=0,
                           augmentation=Augmentation() if augment else None)
    rates = []
    for epoch in range(reps + 1):
        start = time.perf_counter()
        count = sum(len(batch["index"]) for batch in make_loader(dataset, 3, workers,
                                                                 epoch=epoch))
        if epoch > 0:
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


if __name__ == "__main__":
    main()
