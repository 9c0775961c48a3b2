"""The training cache: a subject's model-grid images as slice-major ``.npy`` arrays (no torch).

Cache layout (written by :func:`cache_subject`, one set per subject in ``out_npy_dir``):

* ``<subject>_inputs.npy``  float32 ``(C, Z, Y, X)``, channels in the caller's modality order,
  a missing modality filled with zeros (the paper's inference rule);
* ``<subject>_target.npy``  float32 ``(1, Z, Y, X)``, the normalised CE-T1;
* ``<subject>_mask.npy``    uint8 ``(1, Z, Y, X)``, the model-grid brain mask;
* ``<subject>_cache.json``  modalities, missing ones, shape and ``foreground_slices``; written
  last, so its presence means the arrays are complete.

Arrays are C-contiguous and slice-major (:func:`cesynth.normalise.to_slice_major`), so a 3-slice
patch is one contiguous block per channel of a memory-mapped file.

This module and what it imports need numpy and nibabel only, never torch: the cache job runs in
the base environment, and the model-grid readers here serve inference as well. The torch
datasets and loaders that read the cache are in :mod:`cesynth.data`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cesynth.io import (
    InputError,
    atomic_path,
    check_same_grid,
    load_nifti,
    read_json,
    write_json,
)
from cesynth.normalise import to_slice_major

INPUT_MODALITIES = ("T1w", "T2w", "adc")
"""Default input channel order; channel 0 must be the T1 (the local loss uses it)."""

TARGET_MODALITY = "ceT1w"
PATCH_SLICES = 3
CACHE_SUFFIX = "_cache.json"
ARRAY_NAMES = ("inputs", "target", "mask")


def cache_subject(
    image_paths: Mapping[str, str | Path | None],
    mask_path: str | Path,
    sidecar_path: str | Path,
    out_npy_dir: str | Path,
    *,
    modalities: Sequence[str] = INPUT_MODALITIES,
    subject: str | None = None,
) -> Path:
    """Cache one subject's model-grid images as slice-major ``.npy`` arrays for training.

    Args:
        image_paths: modality -> normalised model-grid NIfTI (values in [0, 1]); ``None`` or an
            absent key marks a missing input, filled with zeros. ``ceT1w`` (the target) and the
            first of ``modalities`` are required.
        mask_path: the model-grid brain mask (``*_space-model_desc-brain_mask.nii.gz``).
        sidecar_path: its JSON sidecar, which holds ``foreground_slices: [first, last]``.
        out_npy_dir: folder of the cache.
        modalities: input channel order.
        subject: cache file prefix; default: the mask file name up to ``_space-``.

    Returns:
        The path of the cache JSON (``<subject>_cache.json``).

    Raises:
        InputError: a required image is missing, a file is missing or unreadable, the grids
            differ, an image is not RAS, or the foreground slice range is invalid.
    """
    _check_required(image_paths, modalities)
    mask_img = load_model_grid_image(mask_path)
    grid = mask_img.shape[:3]
    first, last = read_foreground_slices(sidecar_path, n_slices=grid[2])
    present = {m: image_paths[m] for m in modalities if image_paths.get(m) is not None}
    volumes = {m: load_model_grid_volume(p, grid) for m, p in present.items()}
    zeros = np.zeros(grid[::-1], dtype=np.float32)
    inputs = np.stack([volumes.get(m, zeros) for m in modalities])
    target = load_model_grid_volume(image_paths[TARGET_MODALITY], grid)[np.newaxis]
    mask = np.ascontiguousarray(to_slice_major(np.asarray(mask_img.dataobj) > 0))
    arrays = {"inputs": inputs, "target": target, "mask": mask.astype(np.uint8)[np.newaxis]}

    name = subject or Path(mask_path).name.split("_space-")[0].split(".")[0]
    out_dir = Path(out_npy_dir)
    for key, array in arrays.items():
        _save_npy(array, out_dir / f"{name}_{key}.npy")
    meta = {
        "subject": name,
        "modalities": list(modalities),
        "missing": [m for m in modalities if m not in present],
        "shape_zyx": list(inputs.shape[1:]),
        "foreground_slices": [first, last],
        "files": {key: f"{name}_{key}.npy" for key in arrays},
        "sources": {**{m: str(p) for m, p in present.items()},
                    TARGET_MODALITY: str(image_paths[TARGET_MODALITY]), "mask": str(mask_path)},
    }
    return write_json(meta, out_dir / f"{name}{CACHE_SUFFIX}")


def find_caches(cache_dir: str | Path) -> list[Path]:
    """All cache JSONs in ``cache_dir``, sorted by name (a stable subject order)."""
    return sorted(Path(cache_dir).glob(f"*{CACHE_SUFFIX}"))


def _check_required(image_paths: Mapping[str, Any], modalities: Sequence[str]) -> None:
    for required in (modalities[0], TARGET_MODALITY):
        if image_paths.get(required) is None:
            raise InputError(required, "required image is missing")
    unknown = set(image_paths) - set(modalities) - {TARGET_MODALITY}
    if unknown:
        raise InputError("cache_subject", f"unknown modalities {sorted(unknown)}")


def load_model_grid_image(path: str | Path) -> nib.Nifti1Image:
    """Load a 3D RAS-canonical model-grid NIfTI, or raise an InputError naming the file."""
    img = load_nifti(path)
    if nib.aff2axcodes(img.affine) != ("R", "A", "S") or len(img.shape) != 3:
        raise InputError(path, "not a 3D RAS model-grid image (run the normalise stage first)")
    return img


def load_model_grid_volume(path: str | Path, grid: tuple[int, ...]) -> np.ndarray:
    """Load a model-grid image as a contiguous, slice-major float32 ``(Z, Y, X)`` array.

    Args:
        path: a 3D RAS-canonical model-grid NIfTI.
        grid: the expected RAS ``(x, y, z)`` shape (the brain mask's).

    Returns:
        The voxels, slice-major (:func:`cesynth.normalise.to_slice_major`).

    Raises:
        InputError: the file is missing, unreadable, not 3D RAS, or not of shape ``grid``.
    """
    img = load_model_grid_image(path)
    if img.shape[:3] != grid:
        raise InputError(path, f"grid {img.shape[:3]} differs from the mask grid {grid}")
    return np.ascontiguousarray(to_slice_major(img.get_fdata(dtype=np.float32)))


def load_on_mask_grid(path: str | Path, mask_img: nib.Nifti1Image) -> np.ndarray:
    """A model-grid image as ``(x, y, z)`` float32, checked to lie on the brain mask's grid.

    Args:
        path: a 3D RAS-canonical model-grid NIfTI.
        mask_img: the model-grid brain mask (:func:`load_model_grid_image`).

    Returns:
        The voxels, finite.

    Raises:
        InputError: the file is missing or unreadable, its grid, orientation or affine differ
            from the mask's, or it holds non-finite values.
    """
    img = load_model_grid_image(path)
    check_same_grid(img, mask_img, path, "the brain mask's model")
    volume = img.get_fdata(dtype=np.float32)  # cached by the full read of load_model_grid_image
    if not np.isfinite(volume).all():
        raise InputError(path, "holds non-finite values (NaN or infinity)")
    return volume


def read_foreground_slices(sidecar_path: str | Path, n_slices: int) -> tuple[int, int]:
    """Read the foreground slice range that the normalise stage wrote into the mask sidecar.

    Args:
        sidecar_path: the model-grid mask's JSON sidecar (``foreground_slices: [first, last]``).
        n_slices: slices of the model grid (its z size).

    Returns:
        ``(first, last)``, inclusive, with ``0 <= first <= last < n_slices``.

    Raises:
        InputError: the sidecar is missing or malformed, or the range is invalid.
    """
    value = read_json(sidecar_path).get("foreground_slices")
    try:
        first, last = (int(v) for v in value)
    except (TypeError, ValueError) as err:
        raise InputError(sidecar_path, f"no valid foreground_slices (got {value!r})") from err
    if not 0 <= first <= last < n_slices:
        raise InputError(sidecar_path,
                         f"foreground_slices {[first, last]} outside 0..{n_slices - 1}")
    return first, last


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


__all__ = ["ARRAY_NAMES", "CACHE_SUFFIX", "INPUT_MODALITIES", "PATCH_SLICES",
           "TARGET_MODALITY", "load_on_mask_grid",
           "cache_subject", "find_caches", "load_model_grid_image", "load_model_grid_volume",
           "read_foreground_slices"]
