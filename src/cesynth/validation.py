"""Check every input file of one scan (full read) before any work is done on it: presence of
the required images (each in one file, not as both ``.nii`` and ``.nii.gz``), finite values,
sane affines and voxel sizes, DWI volumes with matching b-values and gradient directions (or a
3D ADC map in their place), and binary tumor and brain masks on the CE-T1 grid.

A FLAIR is checked like the T2 where the scan has one; with ``require_flair`` (a model takes it)
a scan without one fails.

The first problem raises :class:`~cesynth.io.InputError`; nothing here writes a file (the
reports are written by :mod:`cesynth.ingest_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cesynth.ingest import FLAIR, TUMOR_MASK_DERIVATIVE, ScanFiles
from cesynth.io import (
    InputError,
    check_same_grid,
    load_checked_nifti,
    other_nifti_copy,
)

VOXEL_SIZE_RANGE_MM = (0.1, 10.0)


def validate_scan(
    scan: ScanFiles,
    *,
    b_values: Sequence[float] = (0, 500, 1000),
    b_tolerance: float = 50.0,
    require_target: bool = True,
    required_b_values: Sequence[float] = (0,),
    require_flair: bool = False,
) -> dict[str, Any]:
    """Check every input file of a scan (full read) before any work is done on it.

    A scan in Set B needs a tumor mask unless its participant has one in another session.

    Args:
        scan: the scan's files.
        b_values: the preferred diffusion weightings (s/mm2, ``ingest.b_values``).
        b_tolerance: how far a measured b-value may be from a required one.
        required_b_values: those that must be present when the preferred are not all there
            (``ingest.required_b_values``): the ADC fit's rule,
            :func:`cesynth.adc.choose_shells`.
        require_target: the CE-T1 must be present (training and evaluation scans).
        require_flair: the FLAIR must be present (a model's inputs include it).

    Returns:
        A report: scan_id, participant, session, set, status ``"included"``, modalities,
        missing, files (per file: name, shape, voxel size), dwi_volumes, b_values.

    Raises:
        InputError: on the first problem, as ``sub-<scan_id>: <file name>: <problem>``.
    """
    who = f"sub-{scan.scan_id}"
    _require(scan, who, "T1w", scan.t1w, "missing (T1w is always required)")
    if require_target:
        _require(scan, who, "ceT1w", scan.cet1w, "missing (the CE-T1 target is required)")
    if require_flair:
        _require(scan, who, FLAIR, scan.flair, "missing (a model's inputs, train.modalities or "
                                               "an experiment's, include FLAIR; add it, or list "
                                               f"{scan.scan_id} in ingest.exclude_subjects)")
    if scan.set == "B" and scan.tumor_mask is None and not _has_tumor_mask(scan):
        _require(scan, who, "tumor_mask", None, f"missing (participants.tsv puts "
                                                f"sub-{scan.participant} in Set B, which is "
                                                "scored in its expert tumor mask)")
    files: dict[str, dict[str, Any]] = {}
    grids: dict[str, Any] = {}
    anatomy = (("T1w", scan.t1w), ("ceT1w", scan.cet1w), ("T2w", scan.t2w), (FLAIR, scan.flair))
    for modality, path in anatomy:
        if path is not None:
            img, data = _load_checked(who, path)
            _check_anatomy(who, path, img, data)
            files[modality] = _file_entry(path, img)
            grids[modality] = img
    report: dict[str, Any] = {"dwi_volumes": None, "b_values": None}
    if scan.dwi is not None:
        report.update(_check_dwi(scan, who, b_values, b_tolerance, required_b_values))
        files["dwi"] = report.pop("file")
    elif scan.adc is not None:
        files["adc"] = _check_adc_map(who, scan.adc)
    if scan.tumor_mask is not None:
        mask = _check_tumor_mask(who, scan.tumor_mask, grids.get("ceT1w"))
        files["tumor_mask"] = _file_entry(scan.tumor_mask, mask)
    if scan.brain_mask is not None:
        mask = _check_mask(who, scan.brain_mask, grids.get("ceT1w"), "brain mask")
        files["brain_mask"] = _file_entry(scan.brain_mask, mask)
    return {
        "scan_id": scan.scan_id, "participant": scan.participant, "session": scan.session,
        "set": scan.set, "status": "included", "reason": None,
        "modalities": list(scan.available_modalities()),
        "missing": list(scan.missing_modalities()), "files": files, **report,
    }


def _require(scan: ScanFiles, who: str, modality: str, path: Path | None, problem: str) -> None:
    if path is None:
        raise InputError(who, f"{scan.expected_name(modality)}: {problem}")


def _has_tumor_mask(scan: ScanFiles) -> bool:
    """Whether the participant has a tumor mask in any session: a participant is in Set B with
    all its sessions when one has a mask (:func:`cesynth.ingest.discover_bids`), declared or
    not, so only a Set B participant without any mask is refused."""
    if scan.bids_dir is None:
        return False
    folder = scan.bids_dir / TUMOR_MASK_DERIVATIVE / f"sub-{scan.participant}"
    return any(folder.glob(f"**/sub-{scan.participant}_*desc-tumor_mask.nii*"))


def _fail(who: str, path: Path, problem: str) -> InputError:
    return InputError(who, f"{path.name}: {problem}")


def _load_checked(who: str, path: Path) -> tuple[Any, np.ndarray]:
    """Read an image in full and check its values and affine; return image and data."""
    twin = other_nifti_copy(path)
    if twin is not None:
        raise _fail(who, path, f"{twin.name} exists too (one image in two files); keep one")
    try:
        img = load_checked_nifti(path)
    except InputError as err:
        # reader messages may repeat the full path; the one-line error names the file once
        raise _fail(who, path, err.problem.replace(str(path), path.name)) from err
    _check_affine(who, path, img.affine)
    return img, img.get_fdata(dtype=np.float32)


def _check_affine(who: str, path: Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)):
        raise _fail(who, path, "affine has non-finite entries")
    linear = affine[:3, :3]
    voxel_sizes = np.sqrt(np.sum(linear**2, axis=0))
    if abs(np.linalg.det(linear)) < 1e-6 * max(float(np.prod(voxel_sizes)), 1e-12):
        raise _fail(who, path, "singular affine (voxel axes are not independent)")
    low, high = VOXEL_SIZE_RANGE_MM
    if np.any(voxel_sizes < low) or np.any(voxel_sizes > high):
        sizes = " x ".join(f"{size:.3g}" for size in voxel_sizes)
        raise _fail(who, path, f"voxel size {sizes} mm outside {low}-{high} mm")


def _check_anatomy(who: str, path: Path, img: Any, data: np.ndarray) -> None:
    if not (data.ndim == 3 or (data.ndim == 4 and data.shape[3] == 1)):
        raise _fail(who, path, f"expected a 3D image, got shape {tuple(data.shape)}")
    _check_not_constant(who, path, data)


def _check_not_constant(who: str, path: Path, data: np.ndarray) -> None:
    if data.size == 0 or float(data.min()) == float(data.max()):
        value = float(data.flat[0]) if data.size else float("nan")
        raise _fail(who, path, f"constant image (every voxel is {value:g})")


def _file_entry(path: Path, img: Any) -> dict[str, Any]:
    zooms = img.header.get_zooms()[:3]
    return {"file": path.name, "shape": [int(n) for n in img.shape],
            "voxel_size_mm": [round(float(z), 4) for z in zooms]}


def _check_dwi(scan: ScanFiles, who: str, preferred_b: Sequence[float],
               tolerance: float, required_b: Sequence[float]) -> dict[str, Any]:
    assert scan.dwi is not None
    img, data = _load_checked(who, scan.dwi)
    if data.ndim != 4 or data.shape[3] < 2:
        raise _fail(who, scan.dwi, f"expected a 4D DWI series, got shape {tuple(data.shape)}")
    _check_not_constant(who, scan.dwi, data)
    n_volumes = int(data.shape[3])
    _require(scan, who, "bval", scan.bval, f"missing (required with {scan.dwi.name})")
    _require(scan, who, "bvec", scan.bvec, f"missing (required with {scan.dwi.name})")
    assert scan.bval is not None and scan.bvec is not None
    bvals = _read_bval(who, scan.bval, n_volumes)
    _read_bvec(who, scan.bvec, n_volumes)
    shells, fitted = _check_b_values(who, scan.bval, bvals, preferred_b, tolerance, required_b)
    return {"file": _file_entry(scan.dwi, img), "dwi_volumes": n_volumes, "b_values": shells,
            "adc_b_values": fitted}


def _read_numbers(who: str, path: Path) -> list[list[float]]:
    """Read a whitespace-separated table of numbers, one list per non-empty line."""
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return [[float(token) for token in line] for line in lines]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _fail(who, path, f"unreadable ({type(err).__name__})") from err


def _read_bval(who: str, path: Path, n_volumes: int) -> np.ndarray:
    rows = _read_numbers(who, path)
    if len(rows) != 1:
        raise _fail(who, path, f"{len(rows)} rows (expected one row of b-values)")
    bvals = np.array(rows[0])
    if bvals.size != n_volumes:
        raise _fail(who, path, f"{bvals.size} b-values for {n_volumes} volumes")
    if not np.all(np.isfinite(bvals)) or np.any(bvals < 0):
        raise _fail(who, path, "b-values must be finite and non-negative")
    return bvals


def _read_bvec(who: str, path: Path, n_volumes: int) -> np.ndarray:
    rows = _read_numbers(who, path)
    if len(rows) != 3:
        raise _fail(who, path, f"{len(rows)} rows (expected 3: x, y, z)")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise _fail(who, path, f"rows have different lengths {sorted(lengths)}")
    if lengths.pop() != n_volumes:
        raise _fail(who, path, f"{len(rows[0])} directions for {n_volumes} volumes")
    bvecs = np.array(rows)
    if not np.all(np.isfinite(bvecs)):
        raise _fail(who, path, "non-finite gradient directions")
    return bvecs


def _check_b_values(who: str, path: Path, bvals: np.ndarray, preferred_b: Sequence[float],
                    tolerance: float, required_b: Sequence[float]
                    ) -> tuple[list[float], list[float]]:
    """The b-values present and those the ADC fit will use (:func:`cesynth.adc.choose_shells`,
    the fit's own rule); a missing required shell fails the scan."""
    from cesynth.adc import ShellError, choose_shells

    shells = sorted({round(float(b)) for b in bvals})
    try:
        choice = choose_shells(bvals, preferred_b, tolerance, required_b)
    except ShellError as err:
        found = ", ".join(f"{s:g}" for s in shells)
        what = (f"no volume at b={err.missing:g} (within {tolerance:g})"
                if err.missing is not None else "one b-value only (the ADC needs two shells)")
        raise _fail(who, path, f"{what}; b-values found: {found}") from err
    return shells, sorted(round(b) for b in choice.b_values)


def _check_adc_map(who: str, path: Path) -> dict[str, Any]:
    """A given ADC (or MD) map: finite, 3D, sane voxel size, not constant, in a known unit
    (the detection :func:`cesynth.adc_maps.convert_adc_map_file` applies when it converts)."""
    from cesynth.adc_maps import detect_adc_unit

    img, data = _load_checked(who, path)
    _check_anatomy(who, path, img, data)
    try:
        detect_adc_unit(data, path.name)
    except InputError as err:
        raise _fail(who, path, err.problem) from err
    return _file_entry(path, img)


def _check_tumor_mask(who: str, path: Path, target: Any | None) -> Any:
    return _check_mask(who, path, target, "tumor mask")


def _check_mask(who: str, path: Path, target: Any | None, what: str) -> Any:
    img, data = _load_checked(who, path)
    if not (data.ndim == 3 or (data.ndim == 4 and data.shape[3] == 1)):
        raise _fail(who, path, f"expected a 3D mask, got shape {tuple(data.shape)}")
    binary = (np.abs(data) < 1e-3) | (np.abs(data - 1) < 1e-3)
    if not np.all(binary):
        values = np.unique(data[~binary])[:3]
        shown = ", ".join(f"{v:g}" for v in values)
        raise _fail(who, path, f"not a binary mask (values other than 0 and 1: {shown})")
    if not np.any(data > 0.5):
        raise _fail(who, path, f"empty {what} (no voxel is 1)")
    if target is not None:
        _check_same_grid(who, path, img, target)
    return img


def _check_same_grid(who: str, path: Path, img: Any, target: Any) -> None:
    try:
        check_same_grid(img, target, path, "the CE-T1")
    except InputError as err:
        raise _fail(who, path, err.problem) from err
