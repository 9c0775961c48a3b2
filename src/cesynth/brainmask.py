"""Brain mask of a T1-weighted image (the ``cesynth brainmask`` stage).

The workflow computes it on the native CE-T1 grid from one of two images
(:data:`REFERENCES`, config ``brainmask.reference``): the CE-T1 itself, as in the paper, or the
pre-contrast T1 registered to the CE-T1, the image ``cesynth predict`` also has (a new patient has
no CE-T1). :func:`brain_mask_file` can write a JSON sidecar beside the mask that records the
method that actually ran (``auto`` resolved), the reference image and the cesynth version; the
training job reads these sidecars into the model's preprocessing record
(:mod:`cesynth.preprocessing`).

Methods:

- ``fsl``: FSL BET through fslpy's wrappers, the paper's method; needs FSL (``FSLDIR`` and ``bet``).
- ``deepbet``: a CNN whose weights ship in its wheel; runs offline on CPU. Default without FSL.
- ``bet-python``: the ``brainextractor`` package, a pure-Python port of BET; the light fallback.
- ``auto``: the first available of fsl, deepbet, bet-python.
- ``nonzero``: no extraction; the nonzero region of an image that is already skull-stripped,
  cleaned like the others (closing, largest component, holes filled). Refused when the nonzero
  region fills most of the field of view (the image is not skull-stripped).

Datasets declared skull-stripped (config ``ingest.skull_stripped``) are masked by
:func:`declared_brain_mask_file`: the dataset's own mask
(``anat/sub-<id>_desc-brain_mask.nii.gz``, method ``provided``) when it has one, else
``nonzero``; the requested method is then recorded as :data:`SKULL_STRIPPED`.

Every method sees the image resampled to an isotropic grid (BET and its port assume isotropic
voxels; deepbet was trained on about 1 mm scans), so thick-slice clinical scans (5 mm) work too.
The mask is then resampled linearly back to the native grid, thresholded at 0.5 and cleaned:
largest connected component, holes filled. Like BET's, the mask's edge is the inner skull surface
(the brain with the thin layer of CSF around it).

The module is a little over 500 lines because it is one concern, the brain-mask stage: choosing
the method, running it on the isotropic grid, cleaning, the sidecar, the declared masks and the
QC row share the method names and the cleaning above.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to, resample_to_output
from scipy import ndimage

from cesynth import __version__
from cesynth.io import (
    InputError,
    check_output_file,
    check_outputs,
    check_same_grid,
    load_checked_nifti,
    load_nifti,
    save_nifti,
    write_json,
)

METHODS = ("auto", "fsl", "deepbet", "bet-python", "nonzero")
CONCRETE_METHODS = ("fsl", "deepbet", "bet-python")
"""The brain extractors (``auto`` picks among them)."""

DECLARED_METHODS = ("nonzero", "provided")
"""Masks of images declared skull-stripped: the nonzero region, or the dataset's own mask."""

SKULL_STRIPPED = "skull-stripped"
"""The requested method recorded for masks of a dataset declared skull-stripped."""

NONZERO_MAX_FRACTION = 0.8
"""``nonzero`` refuses an image whose nonzero voxels fill more than this share of the grid."""

REFERENCES = ("ceT1w", "T1w")
"""The image a training mask is computed from: the CE-T1 (the paper's choice) or the T1
registered to the CE-T1 grid (what prediction, which has no CE-T1, can reproduce)."""

# Per-method hint printed when a method is asked for but cannot run here.
INSTALL_HINTS = {
    "fsl": "install FSL (conda env envs/fsl.yaml, or https://fsl.fmrib.ox.ac.uk) so that FSLDIR is "
           "set and `bet` runs, plus fslpy (pip install 'cesynth[fsl]'); or use --method deepbet",
    "deepbet": "pip install deepbet fastremap (the weights ship in the wheel)",
    "bet-python": "pip install brainextractor",
}

DEEPBET_VOXEL_MM = 1.0   # deepbet was trained on ~1 mm T1 scans
BET_VOXEL_RANGE_MM = (1.0, 2.0)  # BET: the finest native spacing, kept within this range


class MethodError(InputError, ValueError):
    """An unknown brain-mask method, or one whose software is not installed here."""


# ---------------------------------------------------------------------------------------------
# Method selection


def _fsl_available() -> bool:
    fsldir = os.environ.get("FSLDIR")
    if not fsldir or importlib.util.find_spec("fsl.wrappers") is None:
        return False
    return shutil.which("bet") is not None or Path(fsldir, "bin", "bet").is_file()


def _deepbet_available() -> bool:
    try:
        import deepbet  # noqa: F401  (also pulls fill_voids -> fastremap, cc3d)
    except Exception:  # an ImportError deep inside deepbet's dependencies counts as absent
        return False
    return True


def _bet_python_available() -> bool:
    return importlib.util.find_spec("brainextractor") is not None


_AVAILABILITY = {
    "fsl": _fsl_available,
    "deepbet": _deepbet_available,
    "bet-python": _bet_python_available,
    "nonzero": lambda: True,
}


def available_methods() -> list[str]:
    """List the concrete methods that can run on this machine, in ``auto``'s order of preference.

    Returns:
        A sub-list of ``["fsl", "deepbet", "bet-python"]``.
    """
    return [name for name in CONCRETE_METHODS if _AVAILABILITY[name]()]


def resolve_method(method: str) -> str:
    """Turn a requested method into the concrete method that will run.

    Args:
        method: one of :data:`METHODS`.

    Returns:
        ``"fsl"``, ``"deepbet"``, ``"bet-python"`` or ``"nonzero"``.

    Raises:
        MethodError: (an :class:`InputError` and a :class:`ValueError`) for an unknown method, or
            one that is not installed; the message names the method and what to install.
    """
    if method not in METHODS:
        raise MethodError(f"method '{method}'", f"unknown brain-mask method; choose one of "
                                                f"{', '.join(METHODS)}")
    if method == "auto":
        found = available_methods()
        if not found:
            raise MethodError("method 'auto'", "no brain-mask method is installed; "
                                               + INSTALL_HINTS["deepbet"])
        return found[0]
    if not _AVAILABILITY[method]():
        raise MethodError(f"method '{method}'", f"not available here; {INSTALL_HINTS[method]}")
    return method


# ---------------------------------------------------------------------------------------------
# Public API


def brain_mask(
    image: nib.Nifti1Image, method: str = "auto", *, threads: int = 1
) -> tuple[np.ndarray, dict[str, Any]]:
    """Compute a brain mask of a (contrast-enhanced) T1 image on its native grid.

    Args:
        image: a 3D image (a 4D image with a single volume is accepted).
        method: one of :data:`METHODS`.
        threads: CPU threads for the method (torch threads for deepbet).

    Returns:
        ``(mask, info)``: a boolean array of the image's shape, and a dict with ``method``,
        ``voxel_mm`` (the isotropic spacing the method ran at), ``volume_ml`` and ``seconds``.

    Raises:
        MethodError: the method is unknown or unavailable.
        InputError: the image is not 3D, is empty, or no brain was found.
    """
    start = time.perf_counter()
    concrete = resolve_method(method)
    native = _as_3d_float(image)
    if concrete == "nonzero":
        mask = nonzero_mask(np.asarray(native.dataobj))
        return mask, {"method": concrete, "requested_method": method, "voxel_mm": None,
                      "volume_ml": mask_volume_ml(mask, native.affine),
                      "seconds": round(time.perf_counter() - start, 3)}
    voxel_mm = _isotropic_voxel_mm(native, concrete)
    iso = resample_to_output(native, voxel_sizes=(voxel_mm,) * 3, order=1)
    soft_iso = _RUNNERS[concrete](iso, threads)
    soft_native = resample_from_to(nib.Nifti1Image(soft_iso.astype(np.float32), iso.affine),
                                   (native.shape, native.affine), order=1)
    mask = clean_mask(np.asarray(soft_native.dataobj) >= 0.5)
    if not mask.any():
        raise InputError("image", f"{concrete} found no brain in the image")
    info = {
        "method": concrete,
        "requested_method": method,
        "voxel_mm": float(voxel_mm),
        "volume_ml": mask_volume_ml(mask, native.affine),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return mask, info


def brain_mask_file(
    image_path: str | os.PathLike,
    out_path: str | os.PathLike,
    method: str = "auto",
    *,
    threads: int = 1,
    reference: str | None = None,
    sidecar_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Read an image, compute its brain mask and write it (uint8, the image's affine) atomically.

    Args:
        image_path: the image the mask is computed from (CE-T1 or T1).
        out_path: where the mask goes (``.nii.gz``).
        method: one of :data:`METHODS`.
        threads: CPU threads for the method.
        reference: which image ``image_path`` is, one of :data:`REFERENCES` (recorded in the
            sidecar; needed with ``sidecar_path``).
        sidecar_path: also write :func:`mask_sidecar` here (JSON).

    Returns:
        The info dict of :func:`brain_mask` plus ``image`` and ``out`` paths (and ``reference``
        when given); ``seconds`` covers reading and writing too.

    Raises:
        InputError: naming the output when it is the image, a folder, not writable or not
            ``.nii``/``.nii.gz``; naming the image file when it is unreadable, not 3D, has a
            voxel size that is not positive or a voxel that is not finite, or has no brain;
            naming the method when it is unknown or not installed.
        ValueError: an unknown reference, or a sidecar asked for without one.
    """
    start = time.perf_counter()
    if reference is not None and reference not in REFERENCES:
        raise ValueError(f"unknown brain-mask reference {reference!r}; expected one of "
                         f"{', '.join(REFERENCES)}")
    if sidecar_path is not None and reference is None:
        raise ValueError("a brain-mask sidecar needs the reference image kind")
    resolve_method(method)  # fail on the method before reading anything
    outputs = [out_path] if sidecar_path is None else [out_path, sidecar_path]
    check_outputs(outputs, [image_path])
    check_output_file(out_path, (".nii", ".nii.gz"))
    image = load_checked_nifti(image_path)
    try:
        mask, info = brain_mask(image, method, threads=threads)
    except MethodError:
        raise
    except InputError as err:
        raise InputError(image_path, err.problem) from err
    save_nifti(mask.astype(np.uint8), image.affine, out_path, dtype=np.uint8)
    info.update(image=str(image_path), out=str(out_path),
                seconds=round(time.perf_counter() - start, 3))
    if reference is not None:
        info["reference"] = reference
    if sidecar_path is not None:
        write_json(mask_sidecar(info), sidecar_path)
    return info


def mask_sidecar(info: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON sidecar of a brain mask: how it was made, files by base name only.

    Args:
        info: the info dict of :func:`brain_mask_file` (with ``reference``).

    Returns:
        ``Method`` (the method that ran), ``RequestedMethod`` (e.g. ``auto``, or
        :data:`SKULL_STRIPPED`), ``Reference`` (a :data:`REFERENCES` kind), ``ReferenceImage``
        (its file's base name), ``IsotropicVoxelMM`` (None when nothing was extracted),
        ``VolumeMl``, ``CesynthVersion``, and ``Source`` (in words) for the masks of a dataset
        declared skull-stripped.
    """
    sidecar = {
        "Method": info["method"],
        "RequestedMethod": info.get("requested_method", info["method"]),
        "Reference": info["reference"],
        "ReferenceImage": Path(info["image"]).name,
        "IsotropicVoxelMM": info["voxel_mm"],
        "VolumeMl": info["volume_ml"],
        "CesynthVersion": __version__,
    }
    if "source" in info:
        sidecar["Source"] = info["source"]
    return sidecar


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """The brain of a skull-stripped image: its nonzero region, closed, one component, filled.

    Args:
        data: the 3D image (NaN counts as zero).

    Returns:
        The boolean mask.

    Raises:
        InputError: (on ``image``) no nonzero voxel, or a nonzero region of more than
            :data:`NONZERO_MAX_FRACTION` of the grid (not a skull-stripped image).
    """
    data = np.nan_to_num(np.asarray(data, dtype=np.float32))
    raw = data != 0
    if not raw.any():
        raise InputError("image", "no nonzero voxel (an empty skull-stripped image)")
    fraction = float(np.count_nonzero(raw)) / raw.size
    if fraction > NONZERO_MAX_FRACTION:
        raise InputError("image", f"{fraction:.0%} of the grid is nonzero: not a skull-stripped "
                                  "image (is the dataset really skull-stripped?)")
    return clean_mask(raw, closing_iterations=2)


def declared_brain_mask_file(
    image_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    provided_path: str | os.PathLike | None = None,
    reference: str = "ceT1w",
    sidecar_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The brain mask of an image declared skull-stripped (``ingest.skull_stripped``).

    The dataset's own mask when given (method ``provided``: checked to be binary and to lie on
    the image's grid, otherwise as given), else the image's nonzero region (``nonzero``). No
    brain extraction runs. The requested method is recorded as :data:`SKULL_STRIPPED`.

    Args:
        image_path: the reference image (the CE-T1, or the T1 on its grid).
        out_path: where the mask goes (uint8, the image's affine).
        provided_path: the dataset's mask (``anat/sub-<id>_desc-brain_mask.nii.gz``), or None.
        reference: which image ``image_path`` is (:data:`REFERENCES`).
        sidecar_path: also write :func:`mask_sidecar` here.

    Returns:
        The info dict of :func:`brain_mask_file`, with ``source`` in words.

    Raises:
        InputError: naming the file: the provided mask is on another grid or empty; the image
            has no nonzero voxel or is not skull-stripped.
    """
    start = time.perf_counter()
    if reference not in REFERENCES:
        raise ValueError(f"unknown brain-mask reference {reference!r}")
    if provided_path is None:
        info = brain_mask_file(image_path, out_path, "nonzero", reference=reference)
        info["source"] = (f"nonzero region of {Path(image_path).name} (declared skull-stripped)")
    else:
        image = load_nifti(image_path)
        provided = load_nifti(provided_path)
        check_same_grid(provided, image, provided_path, "the CE-T1")
        values = np.asarray(provided.dataobj, dtype=np.float32).reshape(image.shape[:3])
        binary = (np.abs(values) < 1e-3) | (np.abs(values - 1) < 1e-3)
        if not np.all(binary):
            raise InputError(provided_path, "not a binary mask (values other than 0 and 1)")
        mask = values > 0.5
        if not mask.any():
            raise InputError(provided_path, "empty brain mask (no voxel is 1)")
        save_nifti(mask.astype(np.uint8), image.affine, out_path, dtype=np.uint8)
        info = {"method": "provided", "voxel_mm": None,
                "volume_ml": mask_volume_ml(mask, image.affine), "image": str(image_path),
                "out": str(out_path), "reference": reference,
                "source": f"the dataset's mask {Path(provided_path).name} "
                          "(declared skull-stripped)"}
    info.update(requested_method=SKULL_STRIPPED, seconds=round(time.perf_counter() - start, 3))
    if sidecar_path is not None:
        write_json(mask_sidecar(info), sidecar_path)
    return info


def write_qc_row(
    info: Mapping[str, Any],
    scan_id: str,
    out_tsv: str | os.PathLike,
    *,
    true_mask_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write one brain mask's QC row: how it was made, its volume and the volume's plausibility.

    Args:
        info: the info dict of :func:`brain_mask_file` or :func:`declared_brain_mask_file`
            (with ``reference``); the mask is its ``out``.
        scan_id: the subject (and session) label.
        out_tsv: the one-row QC table to write.
        true_mask_path: the phantom's true brain mask on the mask's grid, if known (adds
            ``truth_dice``).

    Returns:
        The metrics and flags of the row (for MLflow).
    """
    from cesynth import qc

    metrics = {key: info[key] for key in ("method", "reference", "volume_ml", "seconds")}
    if "source" in info:
        metrics["source"] = info["source"]
    if true_mask_path is not None:
        metrics["truth_dice"] = dice_files(info["out"], true_mask_path)
    flags = qc.plausibility_flags(brain_volume_ml=info["volume_ml"])
    qc.write_row(qc.qc_row("brainmask", scan_id, metrics, flags), out_tsv)
    return {**metrics, **flags}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two masks of the same shape.

    Args:
        a: a mask (nonzero = inside).
        b: a mask of the same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty.
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ, {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mask_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of a mask in millilitres.

    Args:
        mask: a 3D mask (nonzero = inside).
        affine: its 4x4 voxel-to-world matrix (mm).

    Returns:
        Number of voxels times the voxel volume (|det| of the affine's 3x3 part), in ml.
    """
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))
    return int(np.count_nonzero(mask)) * voxel_mm3 / 1000.0


def clean_mask(mask: np.ndarray, closing_iterations: int = 0) -> np.ndarray:
    """Keep the largest connected component and fill its holes.

    Args:
        mask: a boolean 3D mask.
        closing_iterations: optional binary closing (6-connected) before the clean-up.

    Returns:
        The cleaned boolean mask (all False when the input is empty).
    """
    mask = np.asarray(mask, dtype=bool)
    if closing_iterations > 0:
        # pad so the closing does not erode a mask touching the border of the field of view
        pad = closing_iterations
        padded = np.pad(mask, pad)
        mask = ndimage.binary_closing(padded, iterations=closing_iterations)[
            pad:-pad, pad:-pad, pad:-pad]
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


# ---------------------------------------------------------------------------------------------
# Internals


def _as_3d_float(image: nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError("image", f"expected a 3D image, got shape {data.shape}")
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if not np.ptp(data) > 0:
        raise InputError("image", "image is constant (no brain to find)")
    return nib.Nifti1Image(data, image.affine)


def _isotropic_voxel_mm(image: nib.Nifti1Image, method: str) -> float:
    if method == "deepbet":
        return DEEPBET_VOXEL_MM
    finest = float(min(image.header.get_zooms()[:3]))
    return float(np.clip(finest, *BET_VOXEL_RANGE_MM))


@functools.lru_cache(maxsize=1)
def _deepbet_model() -> Any:
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=True)  # weights from the wheel; CPU keeps results reproducible


def _run_deepbet(iso: nib.Nifti1Image, threads: int) -> np.ndarray:
    """deepbet's probability map on the isotropic grid."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    canonical = nib.as_closest_canonical(iso)
    prob = _deepbet_model().run_model(np.asarray(canonical.dataobj, dtype=np.float32))
    # back from RAS-canonical to the grid of ``iso`` (resample_to_output is already RAS-like)
    prob_img = nib.Nifti1Image(prob.astype(np.float32), canonical.affine)
    return np.asarray(resample_from_to(prob_img, iso, order=0).dataobj, dtype=np.float32)


def _run_bet_python(iso: nib.Nifti1Image, threads: int) -> np.ndarray:
    """brainextractor's mask (0/1) on the isotropic grid."""
    from brainextractor import BrainExtractor

    # brainextractor reads the voxel size from pixdim; a fresh header carries the iso spacing
    img = nib.Nifti1Image(np.asarray(iso.dataobj, dtype=np.float32), iso.affine)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every iteration
        extractor = BrainExtractor(img=img)
        extractor.run()
        return extractor.compute_mask().astype(np.float32)


def _run_fsl(iso: nib.Nifti1Image, threads: int) -> np.ndarray:
    """FSL BET's mask (0/1) on the isotropic grid."""
    from fsl.wrappers import bet

    with tempfile.TemporaryDirectory(prefix="cesynth-bet-") as tmp:
        src = Path(tmp, "image.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(iso.dataobj, dtype=np.float32), iso.affine), src)
        bet(str(src), str(Path(tmp, "brain")), mask=True, seg=False, robust=True)
        # the extension follows FSLOUTPUTTYPE (NIFTI_GZ by default)
        (mask_path,) = Path(tmp).glob("brain_mask.nii*")
        return np.asarray(nib.load(mask_path).dataobj, dtype=np.float32)


_RUNNERS = {"fsl": _run_fsl, "deepbet": _run_deepbet, "bet-python": _run_bet_python}


def dice_files(mask_path: str | os.PathLike, reference_path: str | os.PathLike) -> float:
    """Dice overlap of two mask files on the same grid (e.g. a mask against the phantom's truth).

    Raises:
        InputError: the masks are on different grids.
    """
    mask, reference = load_nifti(mask_path), load_nifti(reference_path)
    check_same_grid(mask, reference, mask_path, f"the {Path(reference_path).name}",
                    full_shape=True)
    return dice(np.asarray(mask.dataobj) > 0, np.asarray(reference.dataobj) > 0)
