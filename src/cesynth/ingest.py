"""Find and check the input BIDS dataset: which scans exist, which split they belong to, and
whether every input file is usable before any work is done on it.

Discovery only looks at names on disk (no image is opened), because it runs when Snakemake
parses the workflow, on datasets of a thousand subjects or more. Validation reads every file in
full, one scan at a time, in the pipeline's first rule. Nothing here writes into the dataset.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cesynth.io import InputError, load_nifti, read_json, read_tsv, write_json, write_tsv

MODALITIES = ("T1w", "ceT1w", "T2w", "dwi")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
SETS = ("A", "B")
TUMOR_MASK_DERIVATIVE = Path("derivatives") / "tumor_masks"
VOXEL_SIZE_RANGE_MM = (0.1, 10.0)
MASK_GRID_TOLERANCE = 1e-3

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_ENTITIES = re.compile(r"^sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?_")
_DATASET_DESCRIPTION = {"Name": "cesynth input", "BIDSVersion": "1.9.0", "DatasetType": "raw"}
_ANAT_SUFFIXES = {"T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w"}


@dataclass(frozen=True)
class ScanFiles:
    """The input files of one scan (a subject, or one session of a subject) as found on disk.

    ``scan_id`` names the scan in every output (``sub-<scan_id>``): the participant label, plus
    ``ses<label>`` when the dataset has sessions.
    """

    scan_id: str
    participant: str
    session: str | None
    t1w: Path | None
    cet1w: Path | None
    t2w: Path | None
    dwi: Path | None
    bval: Path | None
    bvec: Path | None
    tumor_mask: Path | None
    set: str
    bids_dir: Path | None = field(default=None, compare=False, repr=False)

    @property
    def entities(self) -> str:
        """The BIDS file-name prefix: ``sub-01`` or ``sub-01_ses-2``."""
        if self.session is None:
            return f"sub-{self.participant}"
        return f"sub-{self.participant}_ses-{self.session}"

    def available_modalities(self) -> tuple[str, ...]:
        """Return the modalities with an image on disk, in :data:`MODALITIES` order.

        Returns:
            A subset of ``("T1w", "ceT1w", "T2w", "dwi")``.
        """
        images = {"T1w": self.t1w, "ceT1w": self.cet1w, "T2w": self.t2w, "dwi": self.dwi}
        return tuple(name for name in MODALITIES if images[name] is not None)

    def missing_modalities(self) -> tuple[str, ...]:
        """Return the modalities without an image on disk, in :data:`MODALITIES` order."""
        present = self.available_modalities()
        return tuple(name for name in MODALITIES if name not in present)

    def expected_name(self, modality: str) -> str:
        """Return the SPEC file name of ``modality`` (or ``bval``/``bvec``/``tumor_mask``)."""
        if modality in _ANAT_SUFFIXES:
            return f"{self.entities}_{_ANAT_SUFFIXES[modality]}.nii.gz"
        if modality == "tumor_mask":
            return f"{self.entities}_desc-tumor_mask.nii.gz"
        if modality in ("bval", "bvec"):
            return f"{self.entities}_dwi.{modality}"
        return f"{self.entities}_dwi.nii.gz"


# --------------------------------------------------------------------------- discovery


def discover_bids(bids_dir: str | os.PathLike) -> list[ScanFiles]:
    """List the scans of a BIDS dataset from file names alone (no image is read).

    Args:
        bids_dir: the dataset root (holds ``dataset_description.json`` and ``sub-*`` folders).

    Returns:
        One :class:`ScanFiles` per subject, or per subject and session, sorted by scan ID.

    Raises:
        InputError: not a directory, not a BIDS dataset, no subjects, a label that is not
            alphanumeric, a bad ``set`` in ``participants.tsv``, or two scans with one ID.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise InputError(root, "not a directory")
    if not (root / "dataset_description.json").is_file():
        raise InputError(root, "no dataset_description.json (not a BIDS dataset)")
    sets = _read_participant_sets(root / "participants.tsv")
    subject_dirs = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if not subject_dirs:
        raise InputError(root, "no sub-* subject folders")
    scans = [scan for folder in subject_dirs for scan in _scans_of_subject(root, folder, sets)]
    _check_unique_ids(root, scans)
    return sorted(scans, key=lambda scan: scan.scan_id)


def expected_scan(bids_dir: str | os.PathLike, participant: str, set_name: str = "A",
                  session: str | None = None) -> ScanFiles:
    """The scan as it will be once its files exist (demo or DICOM subjects, at parse time).

    Args:
        bids_dir: the dataset root.
        participant: participant label (without ``sub-``).
        set_name: ``"A"`` or ``"B"``; Set B scans expect a tumor mask.
        session: session label, or None.

    Returns:
        A :class:`ScanFiles` with every modality at its SPEC path.
    """
    root = Path(bids_dir)
    entities = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    folder = root / f"sub-{participant}" / (f"ses-{session}" if session else "")
    relative = folder.relative_to(root)
    dwi_stem = folder / "dwi" / f"{entities}_dwi"
    mask = root / TUMOR_MASK_DERIVATIVE / relative / "anat" / f"{entities}_desc-tumor_mask.nii.gz"
    return ScanFiles(
        scan_id=participant + (f"ses{session}" if session else ""), participant=participant,
        session=session, t1w=folder / "anat" / f"{entities}_T1w.nii.gz",
        cet1w=folder / "anat" / f"{entities}_ce-gadolinium_T1w.nii.gz",
        t2w=folder / "anat" / f"{entities}_T2w.nii.gz",
        dwi=dwi_stem.with_name(dwi_stem.name + ".nii.gz"),
        bval=dwi_stem.with_name(dwi_stem.name + ".bval"),
        bvec=dwi_stem.with_name(dwi_stem.name + ".bvec"),
        tumor_mask=mask if set_name == "B" else None, set=set_name, bids_dir=root,
    )


def rescan(scan: ScanFiles) -> ScanFiles:
    """Look a scan's files up on disk again (after a checkpoint has written them).

    Args:
        scan: a scan from :func:`discover_bids` or :func:`expected_scan`.

    Returns:
        The scan with the files that exist now; set kept unless a tumor mask made it B.
    """
    if scan.bids_dir is None:
        raise ValueError(f"scan {scan.scan_id} does not know its dataset root")
    root = scan.bids_dir
    folder = root / f"sub-{scan.participant}" / (f"ses-{scan.session}" if scan.session else "")
    found = _scan_files(root, folder, scan.participant, scan.session, {})
    return replace(found, set="B" if found.tumor_mask is not None else scan.set)


def rescan_files(scan_id: str, inputs: Mapping[str, Any], set_name: str | None = None
                 ) -> ScanFiles:
    """Build a scan from the named input files of a rule (keys t1w, cet1w, t2w, dwi, bval,
    bvec, tumor_mask; absent keys are missing files).

    The participant and session come from the file names; the set from the dataset's
    ``participants.tsv`` when it has one, else from the tumor mask.

    Args:
        scan_id: the scan ID (the rule's ``subject`` wildcard).
        inputs: the rule's named inputs (a Snakemake ``input`` object or a dict).
        set_name: the scan's set when the caller knows it (the workflow does, from discovery);
            None reads it as described above.

    Returns:
        The :class:`ScanFiles`.

    Raises:
        InputError: no anatomical or DWI input, or file names that do not match ``scan_id``.
    """
    keys = ("t1w", "cet1w", "t2w", "dwi", "bval", "bvec", "tumor_mask")
    files = {key: Path(str(inputs[key])) if key in inputs.keys() else None for key in keys}
    named = [files[key] for key in keys[:4] if files[key] is not None]
    if not named:
        raise InputError(f"sub-{scan_id}", "no T1w, CE-T1, T2w or DWI input")
    match = _ENTITIES.match(named[0].name)
    if match is None:
        raise InputError(f"sub-{scan_id}", f"{named[0].name}: not a BIDS file name")
    participant, session = match.groups()
    if participant + (f"ses{session}" if session else "") != scan_id:
        raise InputError(f"sub-{scan_id}", f"{named[0].name}: belongs to another scan")
    root = named[0].parents[3 if session else 2]
    if set_name is None:
        default_set = "B" if files["tumor_mask"] is not None else "A"
        set_name = _read_participant_sets(root / "participants.tsv").get(participant, default_set)
    return ScanFiles(scan_id=scan_id, participant=participant, session=session,
                     t1w=files["t1w"], cet1w=files["cet1w"], t2w=files["t2w"],
                     dwi=files["dwi"], bval=files["bval"], bvec=files["bvec"],
                     tumor_mask=files["tumor_mask"], set=set_name, bids_dir=root)


def list_dicom_subjects(dicom_dir: str | os.PathLike) -> list[str]:
    """List the subject labels of a DICOM input: one sub-folder per (pseudonymous) subject.

    Args:
        dicom_dir: folder holding ``<label>/**`` DICOM files.

    Returns:
        The labels, sorted (hidden folders skipped).

    Raises:
        InputError: not a folder, no subject folders, or a label that is not alphanumeric.
    """
    root = Path(dicom_dir)
    if not root.is_dir():
        raise InputError(root, "not a directory")
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for label in labels:
        if not _LABEL.match(label):
            raise InputError(root / label, "subject folder name is not alphanumeric")
    if not labels:
        raise InputError(root, "no subject folders")
    return labels


def write_dataset_description(bids_dir: str | os.PathLike) -> None:
    """Write a minimal ``dataset_description.json`` into ``bids_dir`` if it has none.

    Args:
        bids_dir: the dataset root (created if needed).
    """
    description = Path(bids_dir) / "dataset_description.json"
    if not description.is_file():
        write_json(_DATASET_DESCRIPTION, description)


def _read_participant_sets(tsv: Path) -> dict[str, str]:
    """Map participant label to set from ``participants.tsv`` (empty if absent or no column)."""
    if not tsv.is_file():
        return {}
    table = read_tsv(tsv)
    if "set" not in table.columns:
        return {}
    if "participant_id" not in table.columns:
        raise InputError(tsv, "has a set column but no participant_id column")
    sets = {}
    for participant_id, value in zip(table["participant_id"], table["set"], strict=True):
        if pd.isna(value):
            continue
        if value.strip().upper() not in SETS:
            raise InputError(tsv, f"set of {participant_id} is {value!r} (expected A or B)")
        sets[participant_id.removeprefix("sub-")] = value.strip().upper()
    return sets


def _label_of(folder: Path, prefix: str) -> str:
    label = folder.name.removeprefix(prefix)
    if not _LABEL.match(label):
        raise InputError(folder.name, "BIDS label is not alphanumeric")
    return label


def _scans_of_subject(root: Path, subject_dir: Path, sets: dict[str, str]) -> list[ScanFiles]:
    participant = _label_of(subject_dir, "sub-")
    session_dirs = sorted(p for p in subject_dir.glob("ses-*") if p.is_dir())
    if not session_dirs:
        return [_scan_files(root, subject_dir, participant, None, sets)]
    if any((subject_dir / kind).is_dir() for kind in ("anat", "dwi")):
        raise InputError(subject_dir.name, "has both ses-* folders and session-less anat/dwi")
    scans = [_scan_files(root, ses_dir, participant, _label_of(ses_dir, "ses-"), sets)
             for ses_dir in session_dirs]
    return _one_set_per_participant(scans, participant in sets)


def _one_set_per_participant(scans: list[ScanFiles], declared: bool) -> list[ScanFiles]:
    """Without a declared set, a participant with a tumor mask in any session is in Set B
    with all its sessions, so one patient never straddles training and Set B."""
    if declared or all(scan.set == "A" for scan in scans):
        return scans
    return [replace(scan, set="B") for scan in scans]


def _find_image(folder: Path, stem: str) -> Path | None:
    for extension in NIFTI_EXTENSIONS:
        candidate = folder / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return None


def _find_file(path: Path) -> Path | None:
    return path if path.is_file() else None


def _scan_files(root: Path, folder: Path, participant: str, session: str | None,
                sets: dict[str, str]) -> ScanFiles:
    entities = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    relative = folder.relative_to(root)
    anat, dwi_dir = folder / "anat", folder / "dwi"
    tumor_mask = _find_image(root / TUMOR_MASK_DERIVATIVE / relative / "anat",
                             f"{entities}_desc-tumor_mask")
    default_set = "B" if tumor_mask is not None else "A"
    return ScanFiles(
        scan_id=participant + (f"ses{session}" if session else ""),
        participant=participant,
        session=session,
        t1w=_find_image(anat, f"{entities}_T1w"),
        cet1w=_find_image(anat, f"{entities}_ce-gadolinium_T1w"),
        t2w=_find_image(anat, f"{entities}_T2w"),
        dwi=_find_image(dwi_dir, f"{entities}_dwi"),
        bval=_find_file(dwi_dir / f"{entities}_dwi.bval"),
        bvec=_find_file(dwi_dir / f"{entities}_dwi.bvec"),
        tumor_mask=tumor_mask,
        set=sets.get(participant, default_set),
        bids_dir=root,
    )


def _check_unique_ids(root: Path, scans: Sequence[ScanFiles]) -> None:
    seen: dict[str, ScanFiles] = {}
    for scan in scans:
        if scan.scan_id in seen:
            raise InputError(root, f"scan ID {scan.scan_id} is ambiguous: "
                                   f"{seen[scan.scan_id].entities} and {scan.entities}")
        seen[scan.scan_id] = scan


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitFractions:
    """Shares of the Set A participants held out for selection and for reporting.

    Args:
        validation: share used for validation (checkpoint selection, early stopping, thresholds).
        test: share reported as the paper's "test set A"; never seen by training or selection.
    """

    validation: float = 0.1
    test: float = 0.2

    def __post_init__(self) -> None:
        shares = (self.validation, self.test)
        if not all(0.0 <= share < 1.0 for share in shares) or sum(shares) >= 1.0:
            raise ValueError(f"split fractions must be in [0, 1) and sum below 1, got "
                             f"validation {self.validation}, test {self.test}")

    @classmethod
    def from_config(cls, sets: Mapping[str, Any]) -> SplitFractions:
        """Read the config's ``sets`` mapping (``validation_fraction``, ``test_fraction``)."""
        return cls(float(sets["validation_fraction"]), float(sets["test_fraction"]))


def participant_split(participant: str, fractions: SplitFractions = SplitFractions()) -> str:
    """Assign a Set A participant to train, validation or test from a hash of its label.

    The SHA-256 of the label gives a position in [0, 1) that is stable across runs and
    machines: [0, validation) is validation, the next ``test`` share is test, the rest train.
    Adding subjects never moves existing ones, and all sessions of one participant land on the
    same side.

    Args:
        participant: the participant label (without ``sub-``).
        fractions: the held-out shares.

    Returns:
        ``"train"``, ``"validation"`` or ``"test"``.
    """
    digest = hashlib.sha256(participant.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < fractions.validation:
        return "validation"
    if position < fractions.validation + fractions.test:
        return "test"
    return "train"


def scan_split(set_name: str, participant: str,
               fractions: SplitFractions = SplitFractions()) -> str:
    """Return the split of a scan: Set B is ``"test"``; Set A follows :func:`participant_split`."""
    if set_name == "B":
        return "test"
    return participant_split(participant, fractions)


def assign_splits(scans: Iterable[ScanFiles],
                  fractions: SplitFractions = SplitFractions()) -> pd.DataFrame:
    """Tabulate the scans with their split and which inputs they have.

    Args:
        scans: the output of :func:`discover_bids`.
        fractions: the held-out shares of Set A participants.

    Returns:
        One row per scan: scan_id, participant, session, set, split, has_T1w, has_ceT1w,
        has_T2w, has_dwi, has_tumor_mask.
    """
    rows = []
    for scan in scans:
        present = scan.available_modalities()
        row = {"scan_id": scan.scan_id, "participant": scan.participant,
               "session": scan.session, "set": scan.set,
               "split": scan_split(scan.set, scan.participant, fractions)}
        row.update({f"has_{name}": name in present for name in MODALITIES})
        row["has_tumor_mask"] = scan.tumor_mask is not None
        rows.append(row)
    columns = ["scan_id", "participant", "session", "set", "split",
               *(f"has_{name}" for name in MODALITIES), "has_tumor_mask"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- validation


def validate_scan(
    scan: ScanFiles,
    *,
    b_values: Sequence[float] = (0, 500, 1000),
    b_tolerance: float = 50.0,
    require_target: bool = True,
) -> dict[str, Any]:
    """Check every input file of a scan (full read) before any work is done on it.

    Args:
        scan: the scan's files.
        b_values: diffusion weightings that must each be present (s/mm2).
        b_tolerance: how far a measured b-value may be from a required one.
        require_target: the CE-T1 must be present (training and evaluation scans).

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
    files: dict[str, dict[str, Any]] = {}
    grids: dict[str, Any] = {}
    for modality, path in (("T1w", scan.t1w), ("ceT1w", scan.cet1w), ("T2w", scan.t2w)):
        if path is not None:
            img, data = _load_checked(who, path)
            _check_anatomy(who, path, img, data)
            files[modality] = _file_entry(path, img)
            grids[modality] = img
    report: dict[str, Any] = {"dwi_volumes": None, "b_values": None}
    if scan.dwi is not None:
        report.update(_check_dwi(scan, who, b_values, b_tolerance))
        files["dwi"] = report.pop("file")
    if scan.tumor_mask is not None:
        mask = _check_tumor_mask(who, scan.tumor_mask, grids.get("ceT1w"))
        files["tumor_mask"] = _file_entry(scan.tumor_mask, mask)
    return {
        "scan_id": scan.scan_id, "participant": scan.participant, "session": scan.session,
        "set": scan.set, "status": "included", "reason": None,
        "modalities": list(scan.available_modalities()),
        "missing": list(scan.missing_modalities()), "files": files, **report,
    }


def _require(scan: ScanFiles, who: str, modality: str, path: Path | None, problem: str) -> None:
    if path is None:
        raise InputError(who, f"{scan.expected_name(modality)}: {problem}")


def _fail(who: str, path: Path, problem: str) -> InputError:
    return InputError(who, f"{path.name}: {problem}")


def _load_checked(who: str, path: Path) -> tuple[Any, np.ndarray]:
    """Read an image in full and check its values and affine; return image and data."""
    try:
        img = load_nifti(path)
    except InputError as err:
        # reader messages may repeat the full path; the one-line error names the file once
        raise _fail(who, path, err.problem.replace(str(path), path.name)) from err
    data = img.get_fdata(dtype=np.float32)
    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise _fail(who, path, f"{n_bad} non-finite voxels (NaN or inf)")
    _check_affine(who, path, img.affine)
    return img, data


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


def _check_dwi(scan: ScanFiles, who: str, required_b: Sequence[float],
               tolerance: float) -> dict[str, Any]:
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
    shells = _check_b_values(who, scan.bval, bvals, required_b, tolerance)
    return {"file": _file_entry(scan.dwi, img), "dwi_volumes": n_volumes, "b_values": shells}


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


def _check_b_values(who: str, path: Path, bvals: np.ndarray, required_b: Sequence[float],
                    tolerance: float) -> list[float]:
    shells = sorted({round(float(b)) for b in bvals})
    for b in required_b:
        if not np.any(np.abs(bvals - b) <= tolerance):
            found = ", ".join(f"{s:g}" for s in shells)
            raise _fail(who, path, f"no volume at b={b:g} (within {tolerance:g}); "
                                   f"b-values found: {found}")
    return shells


def _check_tumor_mask(who: str, path: Path, target: Any | None) -> Any:
    img, data = _load_checked(who, path)
    if not (data.ndim == 3 or (data.ndim == 4 and data.shape[3] == 1)):
        raise _fail(who, path, f"expected a 3D mask, got shape {tuple(data.shape)}")
    binary = (np.abs(data) < 1e-3) | (np.abs(data - 1) < 1e-3)
    if not np.all(binary):
        values = np.unique(data[~binary])[:3]
        shown = ", ".join(f"{v:g}" for v in values)
        raise _fail(who, path, f"not a binary mask (values other than 0 and 1: {shown})")
    if not np.any(data > 0.5):
        raise _fail(who, path, "empty tumor mask (no voxel is 1)")
    if target is not None:
        _check_same_grid(who, path, img, target)
    return img


def _check_same_grid(who: str, path: Path, img: Any, target: Any) -> None:
    if tuple(img.shape[:3]) != tuple(target.shape[:3]):
        raise _fail(who, path, f"not on the CE-T1 grid: shape {tuple(img.shape[:3])} "
                               f"vs {tuple(target.shape[:3])}")
    if not np.allclose(img.affine, target.affine, atol=MASK_GRID_TOLERANCE, rtol=0):
        raise _fail(who, path, "not on the CE-T1 grid: affine differs from the CE-T1's")


# --------------------------------------------------------------------------- reports


def write_scan_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a scan's validation report as JSON (atomically).

    Args:
        report: from :func:`validate_scan` or :func:`exclusion_report`.
        path: output JSON path.
    """
    write_json(report, path)


def exclusion_report(scan: ScanFiles, error: InputError) -> dict[str, Any]:
    """Build the report of a scan that failed validation.

    Args:
        scan: the scan's files.
        error: the validation error.

    Returns:
        A report with status ``"excluded"`` and the one-line error message as reason.
    """
    return {
        "scan_id": scan.scan_id, "participant": scan.participant, "session": scan.session,
        "set": scan.set, "status": "excluded", "reason": str(error),
        "modalities": list(scan.available_modalities()),
        "missing": list(scan.missing_modalities()),
    }


def validate_and_report(scan: ScanFiles, report_path: str | os.PathLike,
                        **validation_options: Any) -> dict[str, Any]:
    """Validate a scan and write its report, included or excluded (the rule's work).

    Args:
        scan: the scan's files.
        report_path: output JSON path.
        **validation_options: passed to :func:`validate_scan` (b_values, b_tolerance,
            require_target).

    Returns:
        The report of an included scan, written at ``report_path``.

    Raises:
        InputError: the scan is invalid. Its report (status ``"excluded"`` and the reason) is
            written at :func:`excluded_report_path` instead: a workflow deletes the outputs of
            a failed job, and the ingest table must still list the scan with its reason.
    """
    excluded_path = excluded_report_path(report_path)
    try:
        report = validate_scan(scan, **validation_options)
    except InputError as err:
        write_scan_report(exclusion_report(scan, err), excluded_path)
        raise
    write_scan_report(report, report_path)
    excluded_path.unlink(missing_ok=True)
    return report


def excluded_report_path(report_path: str | os.PathLike) -> Path:
    """Where the report of an excluded scan goes: ``sub-07.json`` -> ``sub-07.excluded.json``."""
    path = Path(report_path)
    return path.with_name(path.name.removesuffix(".json") + ".excluded.json")


def validate_dataset(bids_dir: str | os.PathLike, fractions: SplitFractions = SplitFractions(),
                     out_tsv: str | os.PathLike | None = None,
                     **validation_options: Any) -> pd.DataFrame:
    """Discover and validate every scan of a dataset (the ``cesynth validate`` command).

    Args:
        bids_dir: the dataset root.
        fractions: the held-out shares of Set A participants.
        out_tsv: where to write the table (optional, atomic).
        **validation_options: passed to :func:`validate_scan`.

    Returns:
        The table of :func:`tabulate_reports`, one row per scan.
    """
    reports = []
    for scan in discover_bids(bids_dir):
        try:
            reports.append(validate_scan(scan, **validation_options))
        except InputError as err:
            reports.append(exclusion_report(scan, err))
    table = _reports_table(reports, fractions)
    if out_tsv is not None:
        write_tsv(table, out_tsv)
    return table


def tabulate_reports(
    report_paths: Iterable[str | os.PathLike],
    out_tsv: str | os.PathLike,
    fractions: SplitFractions = SplitFractions(),
) -> pd.DataFrame:
    """Gather per-scan reports into the ingest QC table (``results/qc/ingest.tsv``).

    Args:
        report_paths: JSON reports written by :func:`write_scan_report`.
        out_tsv: output TSV path (written atomically).
        fractions: the held-out shares of Set A participants (for the split column).

    Returns:
        One row per scan: scan_id, participant, session, set, split (empty when excluded),
        status, reason, modalities, missing.
    """
    table = _reports_table([read_json(path) for path in report_paths], fractions)
    write_tsv(table, out_tsv)
    return table


def write_sets_table(report_paths: Iterable[str | os.PathLike], out_tsv: str | os.PathLike,
                     fractions: SplitFractions = SplitFractions()) -> pd.DataFrame:
    """Write the split of the included scans (``results/ingest/sets.tsv``).

    Args:
        report_paths: JSON reports written by :func:`write_scan_report`.
        out_tsv: output TSV path (written atomically).
        fractions: the held-out shares of Set A participants.

    Returns:
        One row per included scan: scan_id, participant, session, set, split, has_T1w,
        has_ceT1w, has_T2w, has_dwi, has_tumor_mask.
    """
    rows = []
    for report in map(read_json, report_paths):
        if report["status"] != "included":
            continue
        row = {key: report.get(key) for key in ("scan_id", "participant", "session", "set")}
        row["split"] = scan_split(report["set"], report["participant"], fractions)
        row.update({f"has_{name}": name in report["modalities"] for name in MODALITIES})
        row["has_tumor_mask"] = "tumor_mask" in report.get("files", {})
        rows.append(row)
    columns = ["scan_id", "participant", "session", "set", "split",
               *(f"has_{name}" for name in MODALITIES), "has_tumor_mask"]
    table = pd.DataFrame(rows, columns=columns).sort_values("scan_id", kind="stable")
    table = table.reset_index(drop=True)
    write_tsv(table, out_tsv)
    return table


def _reports_table(reports: Iterable[Mapping[str, Any]],
                   fractions: SplitFractions) -> pd.DataFrame:
    rows = []
    for report in reports:
        included = report["status"] == "included"
        rows.append({
            "scan_id": report["scan_id"], "participant": report["participant"],
            "session": report.get("session"), "set": report["set"],
            "split": (scan_split(report["set"], report["participant"], fractions)
                      if included else None),
            "status": report["status"], "reason": report.get("reason"),
            "modalities": ",".join(report.get("modalities", [])),
            "missing": ",".join(report.get("missing", [])),
        })
    columns = ["scan_id", "participant", "session", "set", "split", "status", "reason",
               "modalities", "missing"]
    table = pd.DataFrame(rows, columns=columns).sort_values("scan_id", kind="stable")
    return table.reset_index(drop=True)
