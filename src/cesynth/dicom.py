"""Convert one subject's DICOM folder to the SPEC's BIDS layout with dcm2niix.

The subject label is the folder name (a pseudonym chosen by whoever exported the data); the
DICOM PatientID and PatientName are never used. dcm2niix writes into a temporary folder with
anonymised sidecars; each series is then matched to a modality by its SeriesDescription, its
sidecar is scrubbed of the identifying fields dcm2niix keeps, the NIfTI header's free-text
fields are blanked (dcm2niix writes the acquisition time into ``descrip`` and the DICOM
ImageComments into ``aux_file``), and the files are staged in a hidden folder inside the output
and moved to their BIDS names only once the subject (for :func:`convert_dicom_dataset`, every
subject) is converted: a failure leaves no partly converted subject. Nothing is written inside
the DICOM folder. :func:`convert_series` converts one series folder the same
way (``cesynth predict`` takes DICOM series folders as inputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib

from cesynth import __version__
from cesynth.ingest import DATASET_DESCRIPTION, list_dicom_subjects
from cesynth.io import (
    InputError,
    atomic_path,
    check_outputs,
    check_writable_folder,
    guard_dataset_target,
    read_json,
    write_json,
)

DICOM2BIDS_GENERATOR = "cesynth dicom2bids"
SOURCE_RECORD = ".cesynth-dicom-source.json"
"""Hidden file in each converted ``sub-<label>`` folder: a digest of the DICOM studies it came
from, so a later conversion refuses to put another patient's series into the same subject."""

DEFAULT_SERIES_PATTERNS: dict[str, str] = {
    "ceT1w": r"(post|\+c|gad|gd|contrast|ce[-_ ]?t1)",
    "T1w": r"(t1|mprage|spgr|bravo)",
    "T2w": r"t2(?!\*)",
    "dwi": r"(dwi|diff|trace|dti)",
}

# Sidecar fields that identify a patient, a visit or a site; acquisition parameters are kept.
IDENTIFYING_FIELDS = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientSize", "OtherPatientIDs", "AccessionNumber", "StudyID", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "RequestingPhysician", "StationName",
    "DeviceSerialNumber", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "ImageComments", "StudyDescription", "ProcedureStepDescription", "StudyTime", "SeriesTime",
    "AcquisitionTime", "ContentTime", "AcquisitionDateTime",
})
HEADER_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")
"""NIfTI header fields of free text, blanked in every image converted from DICOM."""
_DATE_FIELD = re.compile(r"(Date|DateTime)$")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_ANAT_SUFFIXES = {"T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w"}


@dataclass(frozen=True)
class ConvertedSeries:
    """One series as dcm2niix wrote it: the image, its sidecar and, for DWI, bval/bvec."""

    nifti: Path
    sidecar: Path
    description: str
    n_slices: int

    def companion(self, extension: str) -> Path | None:
        """Return the ``.bval``/``.bvec`` file beside the image, if dcm2niix wrote one."""
        path = self.sidecar.with_suffix(extension)
        return path if path.is_file() else None


def find_dcm2niix() -> str:
    """Locate the dcm2niix executable: the dcm2niix package's binary, next to Python, on PATH.

    The package's own binary comes first: the ``bin/dcm2niix`` beside Python is a console-script
    wrapper that starts an interpreter just to call it.

    Returns:
        The path of the executable.

    Raises:
        InputError: when no dcm2niix can be found.
    """
    packaged = _packaged_dcm2niix()
    if packaged is not None:
        return packaged
    beside_python = Path(sys.executable).parent / "dcm2niix"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("dcm2niix")
    if on_path:
        return on_path
    raise InputError("dcm2niix", "executable not found next to Python or on PATH "
                                 "(install the dcm2niix package)")


def _packaged_dcm2niix() -> str | None:
    try:
        import dcm2niix
    except ImportError:
        return None
    binary = Path(dcm2niix.bin)
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


def convert_dicom_subject(
    subject_dir: str | os.PathLike,
    bids_dir: str | os.PathLike,
    subject: str,
    patterns: Mapping[str, str] = DEFAULT_SERIES_PATTERNS,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Convert a subject's DICOM series into ``bids_dir/sub-<subject>/`` under SPEC names, all
    or nothing: the files are staged in a hidden folder inside ``bids_dir`` and moved to their
    names only once every series is converted.

    Args:
        subject_dir: folder holding the subject's DICOM files (any depth, any names).
        bids_dir: output BIDS dataset root (``dataset_description.json`` added if absent).
        subject: the pseudonymous subject label (alphanumeric).
        patterns: modality -> case-insensitive regex on SeriesDescription, tried in order.
        work_dir: where to put dcm2niix's temporary output (default: the system temp folder).

    Returns:
        ``{"modalities": {modality: path of the NIfTI}, "unmatched": [series descriptions],
        "duplicates": {modality: [descriptions of the series not kept]}}``.

    Raises:
        InputError: bad label, no DICOM folder, dcm2niix failure, no series matched T1w, or
            ``sub-<subject>`` already holds data of other DICOM studies (another patient) or
            not converted from DICOM; nothing of the subject is written then.
    """
    root = Path(bids_dir)
    studies = _guard_subject(root, subject, Path(subject_dir))
    with _staging(root) as stage:
        result = _convert_subject(subject_dir, stage, subject, patterns, work_dir)
        _write_source_record(stage, subject, studies)
        _move_into_place(stage, root)
        _write_dataset_description(root)
    return _rerooted(result, stage, root)


def convert_dicom_dataset(
    dicom_dir: str | os.PathLike,
    bids_dir: str | os.PathLike,
    patterns: Mapping[str, str] = DEFAULT_SERIES_PATTERNS,
    *,
    keep_going: bool = False,
    on_error: Callable[[InputError], None] | None = None,
) -> dict[str, Any]:
    """Convert every subject folder of ``dicom_dir`` (``cesynth dicom2bids``), all or nothing.

    Every subject is staged in a hidden folder inside ``bids_dir``; the staged files are moved
    to their names only at the end. Without ``keep_going`` the first subject that fails stops
    the conversion and nothing is written; with it, a failing subject is reported through
    ``on_error`` and left out (nothing of it is written), and the others are written.

    Args:
        dicom_dir: one sub-folder of DICOM series per (pseudonymous) subject; only read.
        bids_dir: the BIDS dataset to write (not inside ``dicom_dir``).
        patterns: modality -> regex on SeriesDescription (:data:`DEFAULT_SERIES_PATTERNS`).
        keep_going: on a failing subject, report it and convert the others.
        on_error: called with the :class:`InputError` of each subject left out.

    Returns:
        ``{"converted": {label: result of :func:`convert_dicom_subject`}, "skipped": {label:
        reason}}``.

    Raises:
        InputError: no subject folders, an output inside the DICOM folder or not writable, an
            output holding a dataset not written by ``cesynth dicom2bids`` or a subject of
            other DICOM studies (another patient), or (without ``keep_going``) the first
            failing subject; all but the last before any work.
    """
    source, root = Path(dicom_dir), Path(bids_dir)
    labels = list_dicom_subjects(source)
    check_outputs([root], sources=[source])
    if root.is_file():
        raise InputError(root, "output is a file; give a folder for the BIDS dataset")
    check_writable_folder(root / "dataset_description.json")
    guard_dataset_target(root, DICOM2BIDS_GENERATOR, also=[DATASET_DESCRIPTION])
    studies = {label: _guard_subject(root, label, source / label) for label in labels}
    converted: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    with _staging(root, tidy=True) as stage:
        for label in labels:
            try:
                converted[label] = _convert_subject(source / label, stage / label, label,
                                                    patterns)
                _write_source_record(stage / label, label, studies[label])
            except InputError as err:
                if not keep_going:
                    raise
                skipped[label] = err.problem
                shutil.rmtree(stage / label, ignore_errors=True)
                if on_error is not None:
                    on_error(err)
        for label in converted:
            _move_into_place(stage / label, root)
            converted[label] = _rerooted(converted[label], stage / label, root)
        if converted:
            _write_dataset_description(root)
    return {"converted": converted, "skipped": skipped}


def _convert_subject(subject_dir: str | os.PathLike, out_root: Path, subject: str,
                     patterns: Mapping[str, str], work_dir: str | os.PathLike | None = None
                     ) -> dict[str, Any]:
    """Convert one subject's series into ``out_root/sub-<subject>/`` (a staging folder)."""
    who = f"sub-{subject}"
    if not _LABEL.match(subject):
        raise InputError(who, "subject label is not alphanumeric")
    source = Path(subject_dir)
    if not source.is_dir():
        raise InputError(who, "DICOM folder not found")
    with tempfile.TemporaryDirectory(prefix="cesynth-dcm2niix-", dir=work_dir) as tmp:
        series = _run_dcm2niix(who, source, Path(tmp))
        matched, unmatched = _match_series(series, patterns)
        if "T1w" not in matched:
            found = "; ".join(s.description for s in series) or "none"
            raise InputError(who, f"no series matched T1w (SeriesDescriptions: {found})")
        kept, duplicates = _keep_largest(matched)
        files = {modality: _install(item, out_root, subject, modality)
                 for modality, item in kept.items()}
    return {"modalities": files, "unmatched": unmatched, "duplicates": duplicates}


def dicom_studies_digest(folder: str | os.PathLike) -> str:
    """SHA-256 of the sorted StudyInstanceUIDs of the DICOM files under ``folder`` (the UIDs
    themselves are never written: the digest only tells one patient's studies from another's).
    """
    import pydicom

    uids = set()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception:  # not a DICOM file: dcm2niix skips it too
            continue
        uid = getattr(ds, "StudyInstanceUID", None)
        if uid:
            uids.add(str(uid))
    return hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()


def _guard_subject(root: Path, subject: str, subject_dir: Path) -> str:
    """Refuse (before any work) to convert into a ``sub-<subject>`` that holds data of other
    DICOM studies, or data not converted from DICOM; return the digest of ``subject_dir``'s
    studies."""
    studies = dicom_studies_digest(subject_dir) if subject_dir.is_dir() else ""
    folder = root / f"sub-{subject}"
    if not folder.exists():
        return studies
    record_path = folder / SOURCE_RECORD
    try:
        record = read_json(record_path) if record_path.is_file() else None
    except InputError:
        record = None
    if not isinstance(record, dict) or "dicom_studies_sha256" not in record:
        raise InputError(folder, f"already holds data not converted by {DICOM2BIDS_GENERATOR} "
                                 f"from {subject_dir}; refusing to mix two patients in one "
                                 "subject (remove the folder or give another --out)")
    if record["dicom_studies_sha256"] != studies:
        raise InputError(folder, f"already holds data of another DICOM study than {subject_dir} "
                                 "(another patient?); refusing to mix two patients in one "
                                 "subject (remove the folder or give another --out)")
    return studies


def _write_source_record(stage: Path, subject: str, studies: str) -> None:
    write_json({"GeneratedBy": DICOM2BIDS_GENERATOR, "dicom_studies_sha256": studies},
               stage / f"sub-{subject}" / SOURCE_RECORD)


def _write_dataset_description(root: Path) -> None:
    """``dataset_description.json`` naming ``cesynth dicom2bids``, if the dataset has none."""
    description = root / "dataset_description.json"
    if not description.is_file():
        write_json({**DATASET_DESCRIPTION,
                    "GeneratedBy": [{"Name": DICOM2BIDS_GENERATOR, "Version": __version__}]},
                   description)


@contextlib.contextmanager
def _staging(root: Path, *, tidy: bool = False) -> Iterator[Path]:
    """A hidden staging folder inside ``root``, removed at the end whatever happens (a SIGTERM
    included, where :func:`cesynth.signals.sigterm_raises` is in force); with ``tidy``, ``root``
    too if this made it and nothing was moved into it (not for the workflow's per-subject
    jobs, which share ``root``)."""
    existed = root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".cesynth-dicom2bids-", dir=root) as tmp:
            yield Path(tmp)
    finally:
        if tidy and not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()


def _move_into_place(stage: Path, root: Path) -> None:
    """Move every staged file to the same place under ``root`` (one rename each), replacing
    the files of an earlier conversion and keeping any other file there."""
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        target = root / path.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _rerooted(result: dict[str, Any], stage: Path, root: Path) -> dict[str, Any]:
    """``result`` with its staged paths named where they were moved to."""
    modalities = {m: root / Path(p).relative_to(stage) for m, p in result["modalities"].items()}
    return {**result, "modalities": modalities}


def convert_series(series_dir: str | os.PathLike, out_stem: str | os.PathLike
                   ) -> dict[str, Path]:
    """Convert the DICOM series in one folder to ``<out_stem>.nii.gz`` (and ``.bval``/``.bvec``).

    The header's free-text fields are blanked and no sidecar is kept, so nothing identifying
    leaves the DICOM files; the folder is only read.

    Args:
        series_dir: a folder holding the files of exactly one series (any depth, any names).
        out_stem: the output path without extension (its folder is created).

    Returns:
        ``{"image": path}``, with ``"bval"`` and ``"bvec"`` when dcm2niix found diffusion
        gradients.

    Raises:
        InputError: the folder is missing, holds no series or several, or dcm2niix fails.
    """
    source, stem = Path(series_dir), Path(out_stem)
    if not source.is_dir():
        raise InputError(source, "DICOM series folder not found")
    stem.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cesynth-dcm2niix-", dir=stem.parent) as tmp:
        series = _run_dcm2niix(str(source), source, Path(tmp))
        if len(series) > 1:
            names = "; ".join(s.description or s.nifti.name for s in series)
            raise InputError(source, f"holds {len(series)} DICOM series ({names}); give the "
                                     "folder of one series")
        item = series[0]
        files = {"image": stem.with_name(stem.name + ".nii.gz")}
        _install_image(item.nifti, files["image"])
        for extension in (".bval", ".bvec"):
            companion = item.companion(extension)
            if companion is not None:
                files[extension[1:]] = stem.with_name(stem.name + extension)
                _copy_atomic(companion, files[extension[1:]])
    return files


def _run_dcm2niix(who: str, source: Path, out_dir: Path) -> list[ConvertedSeries]:
    # -f %s: name outputs by series number only, so no identifying text reaches a file name
    command = [find_dcm2niix(), "-ba", "y", "-z", "y", "-f", "series%s", "-o", str(out_dir),
               str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last_line = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
        raise InputError(who, f"dcm2niix failed (exit {result.returncode}): {last_line[0]}")
    series = []
    for sidecar in sorted(out_dir.glob("*.json")):
        nifti = sidecar.with_suffix(".nii.gz")
        if not nifti.is_file():
            continue
        description = str(read_json(sidecar).get("SeriesDescription", ""))
        shape = nib.load(str(nifti)).shape
        series.append(ConvertedSeries(nifti, sidecar, description, int(shape[2])))
    if not series:
        raise InputError(who, "dcm2niix found no convertible DICOM series")
    return series


def _match_series(series: list[ConvertedSeries], patterns: Mapping[str, str]
                  ) -> tuple[dict[str, list[ConvertedSeries]], list[str]]:
    """Group series by the first modality whose pattern matches their description."""
    compiled = {modality: re.compile(pattern, re.IGNORECASE)
                for modality, pattern in patterns.items()}
    matched: dict[str, list[ConvertedSeries]] = {}
    unmatched = []
    for item in series:
        modality = next((m for m, rx in compiled.items() if rx.search(item.description)), None)
        if modality is None:
            unmatched.append(item.description)
        else:
            matched.setdefault(modality, []).append(item)
    return matched, unmatched


def _keep_largest(matched: dict[str, list[ConvertedSeries]]
                  ) -> tuple[dict[str, ConvertedSeries], dict[str, list[str]]]:
    """Keep the series with the most slices per modality; report the others."""
    kept, duplicates = {}, {}
    for modality, candidates in matched.items():
        ordered = sorted(candidates, key=lambda s: s.n_slices, reverse=True)
        kept[modality] = ordered[0]
        if len(ordered) > 1:
            duplicates[modality] = [s.description for s in ordered[1:]]
    return kept, duplicates


def _bids_stem(root: Path, subject: str, modality: str) -> Path:
    if modality == "dwi":
        return root / f"sub-{subject}" / "dwi" / f"sub-{subject}_dwi"
    return root / f"sub-{subject}" / "anat" / f"sub-{subject}_{_ANAT_SUFFIXES[modality]}"


def _install(item: ConvertedSeries, root: Path, subject: str, modality: str) -> Path:
    """Copy a converted series to its BIDS name (atomically) with a scrubbed sidecar."""
    stem = _bids_stem(root, subject, modality)
    nifti = stem.with_name(stem.name + ".nii.gz")
    _install_image(item.nifti, nifti)
    write_json(scrub_sidecar(read_json(item.sidecar)), stem.with_name(stem.name + ".json"))
    if modality == "dwi":
        for extension in (".bval", ".bvec"):
            companion = item.companion(extension)
            if companion is not None:
                _copy_atomic(companion, stem.with_name(stem.name + extension))
    return nifti


def _install_image(source: Path, destination: Path) -> None:
    """Copy a converted image with its header's free-text fields blanked (atomically)."""
    image = nib.load(str(source))
    header = image.header.copy()
    for field in HEADER_TEXT_FIELDS:
        header[field] = b""
    with atomic_path(destination) as tmp:
        nib.save(type(image)(image.dataobj, image.affine, header), tmp)


def _copy_atomic(source: Path, destination: Path) -> None:
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def scrub_sidecar(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Drop identifying fields (names, IDs, dates, site, UIDs) from a dcm2niix sidecar.

    Args:
        sidecar: the parsed JSON sidecar.

    Returns:
        A copy without the fields in :data:`IDENTIFYING_FIELDS` or ending in Date/DateTime.
    """
    return {key: value for key, value in sidecar.items()
            if key not in IDENTIFYING_FIELDS and not _DATE_FIELD.search(key)}

