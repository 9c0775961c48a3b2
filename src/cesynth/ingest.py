"""Find the scans of the input BIDS dataset: which subjects and sessions exist, which of their
modalities are on disk, and which set (A or B) each belongs to.

Discovery only looks at names on disk (no image is opened), because it runs when Snakemake
parses the workflow, on datasets of a thousand subjects or more. Nothing here writes into the
dataset. The train/validation/test split is in :mod:`cesynth.splits`, the full-read checks of a
scan's files in :mod:`cesynth.validation`, and the per-scan reports and ingest tables in
:mod:`cesynth.ingest_report`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cesynth.io import InputError, read_tsv, write_json

MODALITIES = ("T1w", "ceT1w", "T2w", "dwi")
FLAIR = "FLAIR"
"""The optional input, ``anat/sub-<id>_FLAIR.nii.gz``: a scan's input only where a model takes it
(``train.modalities``); never counted as missing otherwise."""
ADC_MAP = "adc"
"""A given ADC (or MD) map, ``dwi/sub-<id>_adc.nii.gz``: the diffusion input of a scan without a
raw DWI (published cohorts); reported as modality ``adc`` in place of ``dwi``."""
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
SETS = ("A", "B")
TUMOR_MASK_DERIVATIVE = Path("derivatives") / "tumor_masks"

SCAN_ID_PATTERN = r"[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?"
"""A scan ID as a regular expression (the workflow's ``subject`` wildcard): see
:func:`scan_id_of`."""

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_ENTITIES = re.compile(r"^sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?_")
DATASET_DESCRIPTION = {"Name": "cesynth input", "BIDSVersion": "1.9.0", "DatasetType": "raw"}
_ANAT_SUFFIXES = {"T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w", FLAIR: FLAIR}


@dataclass(frozen=True)
class ScanFiles:
    """The input files of one scan (a subject, or one session of a subject) as found on disk.

    ``scan_id`` names the scan in every output (``sub-<scan_id>``): see :func:`scan_id_of`.
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
    adc: Path | None = None
    brain_mask: Path | None = None
    tumor_dseg: Path | None = None
    """The expert lesion labels (``desc-tumor_dseg``, with a JSON naming its labels), the
    enhancement truth of a real scan."""
    flair: Path | None = None
    """The FLAIR (:data:`FLAIR`), optional."""

    @property
    def adc_source(self) -> str | None:
        """Where the scan's ADC comes from: ``"dwi"`` (fitted; wins when both exist),
        ``"map"`` (the given ``_adc.nii.gz``) or None (no diffusion input)."""
        return "dwi" if self.dwi is not None else "map" if self.adc is not None else None

    @property
    def entities(self) -> str:
        """The BIDS file-name prefix: ``sub-01`` or ``sub-01_ses-2``."""
        return f"sub-{scan_id_of(self.participant, self.session)}"

    def available_modalities(self) -> tuple[str, ...]:
        """Return the modalities with an image on disk, in :data:`MODALITIES` order.

        Returns:
            A subset of ``("T1w", "ceT1w", "T2w", "dwi")``; ``adc`` in place of ``dwi`` when
            the scan has a given ADC map and no raw DWI; then ``FLAIR`` when it has one.
        """
        images = {"T1w": self.t1w, "ceT1w": self.cet1w, "T2w": self.t2w, "dwi": self.dwi,
                  ADC_MAP: self.adc if self.adc_source == "map" else None, FLAIR: self.flair}
        return tuple(name for name in (*MODALITIES, ADC_MAP, FLAIR) if images[name] is not None)

    def missing_modalities(self) -> tuple[str, ...]:
        """Return the modalities without an image on disk, in :data:`MODALITIES` order (a given
        ADC map stands in for the DWI)."""
        present = set(self.available_modalities())
        if ADC_MAP in present:
            present.add("dwi")
        return tuple(name for name in MODALITIES if name not in present)

    def expected_name(self, modality: str) -> str:
        """Return the SPEC file name of ``modality`` (or ``bval``/``bvec``/``tumor_mask``)."""
        if modality in _ANAT_SUFFIXES:
            return f"{self.entities}_{_ANAT_SUFFIXES[modality]}.nii.gz"
        if modality == "tumor_mask":
            return f"{self.entities}_desc-tumor_mask.nii.gz"
        if modality == "brain_mask":
            return f"{self.entities}_desc-brain_mask.nii.gz"
        if modality == ADC_MAP:
            return f"{self.entities}_adc.nii.gz"
        if modality in ("bval", "bvec"):
            return f"{self.entities}_dwi.{modality}"
        return f"{self.entities}_dwi.nii.gz"


# --------------------------------------------------------------------------- discovery


def scan_id_of(participant: str, session: str | None = None) -> str:
    """The ID of one scan, the one rule for naming it: its BIDS entities without ``sub-``.

    Outputs (``sub-<scan_id>``) so carry the entities of the scan's input files
    (``sub-01_ses-pre_...``). Labels are alphanumeric, so the ``_`` keeps participant and session
    apart: participant ``01ses2`` without sessions is not participant ``01``, session ``2``.

    Args:
        participant: participant label (without ``sub-``).
        session: session label (without ``ses-``), or None for a dataset without sessions.

    Returns:
        ``01`` without a session, ``01_ses-pre`` with one.
    """
    return f"{participant}_ses-{session}" if session else participant


def discover_bids(bids_dir: str | os.PathLike,
                  on_error: Callable[[Path, InputError], None] | None = None) -> list[ScanFiles]:
    """List the scans of a BIDS dataset from file names alone (no image is read).

    Args:
        bids_dir: the dataset root (holds ``dataset_description.json`` and ``sub-*`` folders).
        on_error: called with the folder and the error of each subject folder that cannot be
            read (a label that is not alphanumeric, sessions mixed with session-less data),
            which is then left out; None: such a folder stops the discovery.

    Returns:
        One :class:`ScanFiles` per subject, or per subject and session, sorted by scan ID.

    Raises:
        InputError: not a directory, not a BIDS dataset, no subjects, an unreadable
            ``participants.tsv`` or a bad ``set`` in it, or (without ``on_error``) a subject
            folder that cannot be read.
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
    scans = []
    for folder in subject_dirs:
        try:
            scans.extend(_scans_of_subject(root, folder, sets))
        except InputError as err:
            if on_error is None:
                raise
            on_error(folder, err)
    return sorted(scans, key=lambda scan: scan.scan_id)


def expected_scan(bids_dir: str | os.PathLike, participant: str, set_name: str = "A",
                  session: str | None = None, *, flair: bool = False) -> ScanFiles:
    """The scan as it will be once its files exist (demo or DICOM subjects, at parse time).

    Args:
        bids_dir: the dataset root.
        participant: participant label (without ``sub-``).
        set_name: ``"A"`` or ``"B"``; Set B scans expect a tumor mask.
        session: session label, or None.
        flair: expect a FLAIR too.

    Returns:
        A :class:`ScanFiles` with every modality at its SPEC path (the FLAIR with ``flair``).
    """
    root = Path(bids_dir)
    scan_id = scan_id_of(participant, session)
    entities = f"sub-{scan_id}"
    folder = root / f"sub-{participant}" / (f"ses-{session}" if session else "")
    relative = folder.relative_to(root)
    dwi_stem = folder / "dwi" / f"{entities}_dwi"
    mask = root / TUMOR_MASK_DERIVATIVE / relative / "anat" / f"{entities}_desc-tumor_mask.nii.gz"
    return ScanFiles(
        scan_id=scan_id, participant=participant, session=session,
        t1w=folder / "anat" / f"{entities}_T1w.nii.gz",
        cet1w=folder / "anat" / f"{entities}_ce-gadolinium_T1w.nii.gz",
        t2w=folder / "anat" / f"{entities}_T2w.nii.gz",
        dwi=dwi_stem.with_name(dwi_stem.name + ".nii.gz"),
        bval=dwi_stem.with_name(dwi_stem.name + ".bval"),
        bvec=dwi_stem.with_name(dwi_stem.name + ".bvec"),
        tumor_mask=mask if set_name == "B" else None, set=set_name, bids_dir=root,
        flair=folder / "anat" / f"{entities}_{FLAIR}.nii.gz" if flair else None,
    )


def with_files_on_disk(scan: ScanFiles) -> ScanFiles:
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


def scan_from_rule_inputs(scan_id: str, inputs: Mapping[str, Any],
                          set_name: str | None = None) -> ScanFiles:
    """Build a scan from the named input files of a rule (keys t1w, cet1w, t2w, dwi, bval,
    bvec, tumor_mask, adc, brain_mask, flair; absent keys are missing files).

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
    keys = ("t1w", "cet1w", "t2w", "dwi", "bval", "bvec", "tumor_mask", "adc", "brain_mask",
            "flair")
    files = {key: Path(str(inputs[key])) if key in inputs.keys() else None for key in keys}
    named = [files[key] for key in (*keys[:4], "adc", "flair") if files[key] is not None]
    if not named:
        raise InputError(f"sub-{scan_id}", "no T1w, CE-T1, T2w, DWI or ADC map input")
    match = _ENTITIES.match(named[0].name)
    if match is None:
        raise InputError(f"sub-{scan_id}", f"{named[0].name}: not a BIDS file name")
    participant, session = match.groups()
    if scan_id_of(participant, session) != scan_id:
        raise InputError(f"sub-{scan_id}", f"{named[0].name}: belongs to another scan")
    root = named[0].parents[3 if session else 2]
    if set_name is None:
        default_set = "B" if files["tumor_mask"] is not None else "A"
        set_name = _read_participant_sets(root / "participants.tsv").get(participant, default_set)
    return ScanFiles(scan_id=scan_id, participant=participant, session=session,
                     t1w=files["t1w"], cet1w=files["cet1w"], t2w=files["t2w"],
                     dwi=files["dwi"], bval=files["bval"], bvec=files["bvec"],
                     tumor_mask=files["tumor_mask"], set=set_name, bids_dir=root,
                     adc=files["adc"], brain_mask=files["brain_mask"], flair=files["flair"])


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
        write_json(DATASET_DESCRIPTION, description)


def _read_participant_sets(tsv: Path) -> dict[str, str]:
    """Map participant label to set from ``participants.tsv`` (empty if absent or no column);
    a file that is not UTF-8, empty or ragged is an :class:`InputError` (:func:`read_tsv`), and
    so is a participant on two rows (``sub-01`` and ``01`` are one): which set would win is
    not for the order of the rows to say."""
    if not tsv.is_file():
        return {}
    table = read_tsv(tsv)
    if "set" not in table.columns:
        return {}
    if "participant_id" not in table.columns:
        raise InputError(tsv, "has a set column but no participant_id column")
    sets, rows = {}, {}
    for row, (participant_id, value) in enumerate(zip(table["participant_id"], table["set"],
                                                      strict=True), start=1):
        if pd.isna(participant_id) or not participant_id.strip():
            raise InputError(tsv, f"row {row} (line {row + 1}) has no participant_id")
        label = participant_id.strip().removeprefix("sub-")
        if label in rows:
            raise InputError(tsv, f"sub-{label} is listed twice (rows {rows[label]} and {row}); "
                                  "give each participant one row")
        rows[label] = row
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
    scan_id = scan_id_of(participant, session)
    entities = f"sub-{scan_id}"
    relative = folder.relative_to(root)
    anat, dwi_dir = folder / "anat", folder / "dwi"
    tumor_mask = _find_image(root / TUMOR_MASK_DERIVATIVE / relative / "anat",
                             f"{entities}_desc-tumor_mask")
    default_set = "B" if tumor_mask is not None else "A"
    return ScanFiles(
        scan_id=scan_id,
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
        adc=_find_image(dwi_dir, f"{entities}_{ADC_MAP}"),
        brain_mask=_find_image(anat, f"{entities}_desc-brain_mask"),
        tumor_dseg=_find_image(root / TUMOR_MASK_DERIVATIVE / relative / "anat",
                               f"{entities}_desc-tumor_dseg"),
        flair=_find_image(anat, f"{entities}_{FLAIR}"),
    )
