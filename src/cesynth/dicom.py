"""Convert one subject's DICOM folder to the SPEC's BIDS layout with dcm2niix.

The subject label is the folder name (a pseudonym chosen by whoever exported the data); the
DICOM PatientID and PatientName are never used. Each series' role (T1w, CE-T1, T2w, FLAIR, DWI,
ADC map, derived/other) is decided from its DICOM tags and the order of acquisition
(:mod:`cesynth.dicom_roles`; an ambiguity stops the subject with one line) and recorded, one row
per series, in ``sub-<label>_series.tsv`` (:data:`SERIES_TABLE_DIR` inside the BIDS output, or
where the caller says). Only the chosen series are converted, each on its own, by dcm2niix
into a temporary folder with anonymised sidecars (a scanner ADC map with display scaling,
``-p n``: Philips "precise float" values are not in any ADC unit); its
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
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib

from cesynth import __version__, dicom_roles
from cesynth.dicom_roles import DEFAULT_SERIES_PATTERNS
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

SERIES_TABLE_DIR = Path("derivatives") / "cesynth-dicom"
"""Where ``cesynth dicom2bids`` records each subject's series and their roles, inside the BIDS
output (``derivatives/cesynth-dicom/sub-<label>_series.tsv``)."""

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
_ANAT_SUFFIXES = {"T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w", "FLAIR": "FLAIR"}
_MODALITY_OF_ROLE = {"T1w": "T1w", "ceT1w": "ceT1w", "T2w": "T2w", "FLAIR": "FLAIR",
                     "DWI": "dwi", "ADC": "adc"}
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleOptions:
    """How series roles are decided (:func:`cesynth.dicom_roles.assign_roles`).

    Attributes:
        prefer: ``3d`` or ``2d`` (``ingest.dicom_prefer``): which wins between candidates.
        b_values: the preferred DWI shells (``ingest.b_values``).
        b_tolerance: s/mm2 (``ingest.b_tolerance``).
        overrides: subject -> role -> SeriesNumber, SeriesInstanceUID or ``none``
            (``ingest.dicom_series``, ``--series``).
    """

    prefer: str = dicom_roles.DEFAULT_PREFER
    b_values: tuple[float, ...] = (0.0, 500.0, 1000.0)
    b_tolerance: float = 50.0
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


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
    *,
    options: RoleOptions | None = None,
    series_table: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Convert a subject's DICOM series into ``bids_dir/sub-<subject>/`` under SPEC names, all
    or nothing: the files are staged in a hidden folder inside ``bids_dir`` and moved to their
    names only once every series is converted.

    Args:
        subject_dir: folder holding the subject's DICOM files (any depth, any names).
        bids_dir: output BIDS dataset root (``dataset_description.json`` added if absent).
        subject: the pseudonymous subject label (alphanumeric).
        patterns: role -> case-insensitive regex on SeriesDescription, one signal among the
            tags (:data:`DEFAULT_SERIES_PATTERNS`).
        work_dir: where to put dcm2niix's temporary output (default: the system temp folder).
        options: how roles are decided (:class:`RoleOptions`).
        series_table: where to write the subject's series table (default
            ``bids_dir/derivatives/cesynth-dicom/sub-<subject>_series.tsv``).

    Returns:
        ``{"modalities": {modality: path of the NIfTI}, "unmatched": [descriptions of series
        not used], "duplicates": {modality: [descriptions of candidates not kept]}, "roles":
        {role: SeriesNumber}, "series_table": path, "summary": one line}``.

    Raises:
        InputError: bad label, no DICOM folder, dcm2niix failure, no pre-contrast T1, a role
            the rules cannot settle (naming the candidates by SeriesNumber), or
            ``sub-<subject>`` already holds data of other DICOM studies (another patient) or
            not converted from DICOM; nothing of the subject is written then.
    """
    root = Path(bids_dir)
    studies = _guard_subject(root, subject, Path(subject_dir))
    with _staging(root) as stage:
        result = _convert_subject(subject_dir, stage, subject, patterns, work_dir,
                                  options=options, table=series_table is None)
        _write_source_record(stage, subject, studies)
        _move_into_place(stage, root)
        _write_dataset_description(root)
    if series_table is not None:
        dicom_roles.write_series_table(result.pop("table_rows"), series_table)
        result["series_table"] = Path(series_table)
    return _rerooted(result, stage, root)


def convert_dicom_dataset(
    dicom_dir: str | os.PathLike,
    bids_dir: str | os.PathLike,
    patterns: Mapping[str, str] = DEFAULT_SERIES_PATTERNS,
    *,
    keep_going: bool = False,
    on_error: Callable[[InputError], None] | None = None,
    options: RoleOptions | None = None,
    on_subject: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Convert every subject folder of ``dicom_dir`` (``cesynth dicom2bids``), all or nothing.

    Every subject is staged in a hidden folder inside ``bids_dir``; the staged files are moved
    to their names only at the end. Without ``keep_going`` the first subject that fails stops
    the conversion and nothing is written; with it, a failing subject is reported through
    ``on_error`` and left out (nothing of it is written), and the others are written. Each
    converted subject's series table goes to
    ``bids_dir/derivatives/cesynth-dicom/sub-<label>_series.tsv``.

    Args:
        dicom_dir: one sub-folder of DICOM series per (pseudonymous) subject; only read.
        bids_dir: the BIDS dataset to write (not inside ``dicom_dir``).
        patterns: role -> regex on SeriesDescription (:data:`DEFAULT_SERIES_PATTERNS`).
        keep_going: on a failing subject, report it and convert the others.
        on_error: called with the :class:`InputError` of each subject left out.
        options: how roles are decided (:class:`RoleOptions`).
        on_subject: called with each converted subject's one-line summary.

    Returns:
        ``{"converted": {label: result of :func:`convert_dicom_subject`}, "skipped": {label:
        reason}}``.

    Raises:
        InputError: no subject folders, an output inside the DICOM folder or not writable, an
            output holding a dataset not written by ``cesynth dicom2bids`` or a subject of
            other DICOM studies (another patient), an override naming an unknown subject, or
            (without ``keep_going``) the first failing subject; all but the last before any
            work.
    """
    source, root = Path(dicom_dir), Path(bids_dir)
    labels = list_dicom_subjects(source)
    options = options or RoleOptions()
    unknown = sorted(set(options.overrides) - set(labels))
    if unknown:
        raise InputError(source, f"series overrides name subjects without a folder here: "
                                 f"{', '.join(unknown)}")
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
                                                    patterns, options=options)
                _write_source_record(stage / label, label, studies[label])
            except InputError as err:
                if not keep_going:
                    raise
                skipped[label] = err.problem
                shutil.rmtree(stage / label, ignore_errors=True)
                if on_error is not None:
                    on_error(err)
            else:
                if on_subject is not None:
                    on_subject(converted[label]["summary"])
        for label in converted:
            _move_into_place(stage / label, root)
            converted[label] = _rerooted(converted[label], stage / label, root)
        if converted:
            _write_dataset_description(root)
    return {"converted": converted, "skipped": skipped}


def _convert_subject(subject_dir: str | os.PathLike, out_root: Path, subject: str,
                     patterns: Mapping[str, str], work_dir: str | os.PathLike | None = None,
                     *, options: RoleOptions | None = None, table: bool = True
                     ) -> dict[str, Any]:
    """Decide the roles of one subject's series, convert the chosen ones into
    ``out_root/sub-<subject>/`` (a staging folder) and, with ``table``, write the series table
    at ``out_root/derivatives/cesynth-dicom/`` (else return its rows as ``table_rows``)."""
    who = f"sub-{subject}"
    if not _LABEL.match(subject):
        raise InputError(who, "subject label is not alphanumeric")
    source = Path(subject_dir)
    if not source.is_dir():
        raise InputError(who, "DICOM folder not found")
    options = options or RoleOptions()
    series = dicom_roles.read_series(source)
    if not series:
        raise InputError(who, "dcm2niix found no convertible DICOM series")
    assignment = dicom_roles.assign_roles(
        series, subject, {**DEFAULT_SERIES_PATTERNS, **patterns}, prefer=options.prefer,
        preferred_b=options.b_values, b_tolerance=options.b_tolerance,
        overrides=options.overrides.get(subject, {}))
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="cesynth-dcm2niix-", dir=work_dir) as tmp:
        for role, info in assignment.chosen.items():
            if role == "ADC" and "DWI" in assignment.chosen:
                continue
            item = _convert_chosen(who, role, info, Path(tmp) / role)
            files[_MODALITY_OF_ROLE[role]] = _install(item, out_root, subject,
                                                      _MODALITY_OF_ROLE[role])
    names = {role: files[_MODALITY_OF_ROLE[role]].name for role in assignment.chosen
             if _MODALITY_OF_ROLE[role] in files}
    rows = dicom_roles.series_table(assignment, names)
    summary = assignment.summary(subject)
    _log.info("%s", summary)
    result: dict[str, Any] = {
        "modalities": files,
        "unmatched": [c.info.description for c in assignment.series
                      if c.kind in ("other", "derived")],
        "duplicates": _duplicates(assignment),
        "roles": {role: info.number for role, info in assignment.chosen.items()},
        "summary": summary,
    }
    if table:
        path = out_root / SERIES_TABLE_DIR / f"sub-{subject}_series.tsv"
        result["series_table"] = dicom_roles.write_series_table(rows, path)
    else:
        result["table_rows"] = rows
    return result


def _duplicates(assignment: dicom_roles.Assignment) -> dict[str, list[str]]:
    """Per modality, the descriptions of the candidates ranked below the chosen series."""
    duplicates: dict[str, list[str]] = {}
    for c in assignment.series:
        if c.decision.startswith("rejected as "):
            role = c.decision.removeprefix("rejected as ").split(":")[0]
            duplicates.setdefault(_MODALITY_OF_ROLE[role], []).append(c.info.description)
    return duplicates


def _convert_chosen(who: str, role: str, info: dicom_roles.SeriesInfo, folder: Path
                    ) -> ConvertedSeries:
    """Convert one series on its own (links to its files in a folder of their own)."""
    files = folder / "files"
    files.mkdir(parents=True)
    for index, path in enumerate(info.files):
        link = files / f"{index:06d}.dcm"
        try:
            link.symlink_to(path.resolve())
        except OSError:
            shutil.copyfile(path, link)
    out = folder / "out"
    out.mkdir()
    converted = _run_dcm2niix(who, files, out, display_scaling=role == "ADC")
    return _one_output(who, info, converted)


def _one_output(who: str, info: dicom_roles.SeriesInfo, converted: list[ConvertedSeries]
                ) -> ConvertedSeries:
    """The image of a series dcm2niix split into several (echoes, a vendor's extra volume):
    the one without a suffix, else the one with the most slices."""
    if len(converted) == 1:
        return converted[0]
    plain = [c for c in converted if re.fullmatch(r"series\d*", c.sidecar.stem)]
    if len(plain) == 1:
        return plain[0]
    ranked = sorted(converted, key=lambda c: c.n_slices, reverse=True)
    if ranked[0].n_slices == ranked[1].n_slices:
        raise InputError(who, f"series {info.label}: dcm2niix wrote {len(converted)} images "
                              "and none is the series itself; pin another series")
    return ranked[0]


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
    table = Path(result["series_table"])
    if table.is_relative_to(stage):
        table = root / table.relative_to(stage)
    return {**result, "modalities": modalities, "series_table": table}


def convert_series(series_dir: str | os.PathLike, out_stem: str | os.PathLike, *,
                   display_scaling: bool = False) -> dict[str, Path]:
    """Convert the DICOM series in one folder to ``<out_stem>.nii.gz`` (and ``.bval``/``.bvec``).

    The header's free-text fields are blanked and no sidecar is kept, so nothing identifying
    leaves the DICOM files; the folder is only read.

    Args:
        series_dir: a folder holding the files of exactly one series (any depth, any names).
        out_stem: the output path without extension (its folder is created).
        display_scaling: apply RescaleSlope/Intercept rather than Philips' private "precise
            float" scale (``dcm2niix -p n``): what a scanner's ADC map needs to be in its
            unit (1e-6 mm2/s); no effect on other vendors' files.

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
        series = _run_dcm2niix(str(source), source, Path(tmp), display_scaling=display_scaling)
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


def _run_dcm2niix(who: str, source: Path, out_dir: Path, *, display_scaling: bool = False
                  ) -> list[ConvertedSeries]:
    # -f %s: name outputs by series number only, so no identifying text reaches a file name;
    # -p n: Philips display scaling (RescaleSlope/Intercept), the scale a scanner's map is in
    command = [find_dcm2niix(), "-ba", "y", "-z", "y", "-f", "series%s",
               *(["-p", "n"] if display_scaling else []), "-o", str(out_dir), str(source)]
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


def _bids_stem(root: Path, subject: str, modality: str) -> Path:
    if modality in ("dwi", "adc"):
        return root / f"sub-{subject}" / "dwi" / f"sub-{subject}_{modality}"
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
    for name in HEADER_TEXT_FIELDS:
        header[name] = b""
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

