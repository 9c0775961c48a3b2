"""Test helper: tiny BIDS datasets of structured, noisy volumes written as real NIfTI files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (12, 14, 10)
AFFINE = np.array([[2.0, 0, 0, -12], [0, 2.0, 0, -14], [0, 0, 2.5, -12], [0, 0, 0, 1]])
BVALS = (0, 500, 500, 500, 1000, 1000, 1000)
BVECS = np.array([[0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0, 1]], float)


def ellipsoid(shape: tuple[int, ...] = SHAPE, seed: int = 0, scale: float = 1000.0) -> np.ndarray:
    """An ellipsoid of intensity ``scale`` in a dark background, with Gaussian noise."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[:3]), indexing="ij")
    inside = sum(axis**2 for axis in grid) < 0.7
    return (scale * inside + rng.normal(0, scale * 0.05, shape[:3])).clip(0).astype(np.float32)


def dwi_series(bvals: tuple[float, ...] = BVALS, seed: int = 0) -> np.ndarray:
    """A DWI series: S0 * exp(-b * ADC), ADC 1e-3 mm2/s, one volume per b-value."""
    s0 = ellipsoid(seed=seed) + 10
    return np.stack([s0 * np.exp(-b * 1e-3) for b in bvals], axis=-1).astype(np.float32)


def save(data: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    """Save ``data`` as NIfTI (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def make_dataset(root: Path) -> Path:
    """Create the dataset root with ``dataset_description.json``."""
    root.mkdir(parents=True, exist_ok=True)
    description = {"Name": "test", "BIDSVersion": "1.9.0", "DatasetType": "raw"}
    (root / "dataset_description.json").write_text(json.dumps(description))
    return root


def add_subject(
    root: Path,
    label: str,
    *,
    session: str | None = None,
    modalities: tuple[str, ...] = ("T1w", "ceT1w", "T2w", "dwi"),
    tumor_mask: bool = False,
    seed: int = 0,
) -> dict[str, Path]:
    """Write one subject (or session) with the given modalities; return the written paths."""
    entities = f"sub-{label}" + (f"_ses-{session}" if session else "")
    folder = root / f"sub-{label}" / (f"ses-{session}" if session else "")
    suffixes = {"T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w", "FLAIR": "FLAIR"}
    paths: dict[str, Path] = {}
    for offset, modality in enumerate(suffixes):
        if modality in modalities:
            paths[modality] = save(ellipsoid(seed=seed + offset),
                                   folder / "anat" / f"{entities}_{suffixes[modality]}.nii.gz")
    if "dwi" in modalities:
        stem = folder / "dwi" / f"{entities}_dwi"
        paths["dwi"] = save(dwi_series(seed=seed), stem.with_name(stem.name + ".nii.gz"))
        paths["bval"] = stem.with_name(stem.name + ".bval")
        paths["bval"].write_text(" ".join(str(b) for b in BVALS) + "\n")
        paths["bvec"] = stem.with_name(stem.name + ".bvec")
        paths["bvec"].write_text("\n".join(" ".join(f"{v:g}" for v in row) for row in BVECS))
    if tumor_mask:
        mask = np.zeros(SHAPE, np.uint8)
        mask[5:8, 6:9, 4:6] = 1
        mask_dir = root / "derivatives" / "tumor_masks" / f"sub-{label}"
        mask_dir = mask_dir / (f"ses-{session}" if session else "") / "anat"
        paths["tumor_mask"] = save(mask, mask_dir / f"{entities}_desc-tumor_mask.nii.gz")
    return paths


def tree_fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    """Map every file and folder under ``root`` to (mtime_ns, sha256 of the bytes or "dir")."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}
