"""Import a published cohort's folder layout (UCSF-PDGM, BraTS) into the SPEC's BIDS layout.

One source folder per case; each contrast is found by a file-name pattern from
:data:`cesynth.import_layouts.LAYOUTS` (overridable from config ``import.patterns``; the layouts
and the plan from file names are :mod:`cesynth.import_layouts`). For every case this writes::

    sub-<label>/anat/sub-<label>_T1w.nii.gz                  (required: T1)
    sub-<label>/anat/sub-<label>_ce-gadolinium_T1w.nii.gz    (required: T1c)
    sub-<label>/anat/sub-<label>_T2w.nii.gz                  (when present)
    sub-<label>/anat/sub-<label>_FLAIR.nii.gz                (when present)
    sub-<label>/dwi/sub-<label>_adc.nii.gz + _adc.json       (ADC map, or DTI MD; when present)
    derivatives/tumor_masks/sub-<label>/anat/sub-<label>_desc-tumor_mask.nii.gz  (chosen labels)
    derivatives/tumor_masks/sub-<label>/anat/sub-<label>_desc-tumor_dseg.nii.gz  (+ .json)

plus ``participants.tsv`` (``participant_id``, ``set``, ``source_case``) and
``dataset_description.json``. The label is the public case ID with everything but letters and
digits removed (``UCSF-PDGM-0004`` -> ``UCSFPDGM0004``, ``BraTS-GLI-00002-000`` ->
``BraTSGLI00002000``); ``source_case`` keeps the public case ID, nothing else about a patient.

Images go through a nibabel round trip: voxels, data type and affine unchanged, the header's
free-text fields (``descrip``, ``aux_file``, ``db_name``, ``intent_name``) cleared and header
extensions dropped. A case is staged in a hidden folder inside the output and its subject
folders are swapped into place only when all its files are written (a re-import leaves none of
the earlier files); nothing is ever written inside the source folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from cesynth import __version__
from cesynth.adc_maps import detect_adc_unit
from cesynth.import_layouts import (
    LAYOUTS,
    CasePlan,
    expected_name,
    layout_spec,
    plan_import,
    resolve_tumor_labels,
)
from cesynth.io import (
    InputError,
    check_same_grid,
    check_voxel_sizes,
    guard_dataset_target,
    quiet_nibabel,
    write_json,
    write_tsv,
)

IMPORT_GENERATOR = "cesynth import"
CLEARED_HEADER_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")
SET_MODES = ("auto", "A", "B")
TUMOR_MASK_DERIVATIVE = Path("derivatives") / "tumor_masks"

_ANAT_SUFFIX = {"T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w", "FLAIR": "FLAIR"}


# ----------------------------------------------------------------------------- the plan's scans


def planned_scans(source_dir: str | os.PathLike, bids_dir: str | os.PathLike, layout: str,
                  patterns: Mapping[str, Any] | None = None, set_mode: str = "auto") -> list[Any]:
    """The scans the import will write into ``bids_dir``, from the source's file names alone
    (what the workflow needs before the import has run).

    Cases whose names already show a problem are left out. A case's set is ``set_mode``, or
    with ``auto`` Set B when it has a tumor segmentation (the import itself puts a case whose
    segmentation lacks the chosen labels in Set A: that needs the image read).

    Returns:
        :class:`cesynth.ingest.ScanFiles`, with only the modalities the case has.
    """
    from dataclasses import replace

    from cesynth import ingest

    scans = []
    for plan in plan_import(source_dir, layout, patterns):
        if plan.problem is not None or (set_mode == "B" and not plan.has_segmentation):
            continue
        set_name = set_mode if set_mode != "auto" else ("B" if plan.has_segmentation else "A")
        scan = ingest.expected_scan(bids_dir, plan.label, set_name)
        sub = Path(bids_dir) / f"sub-{plan.label}"
        scans.append(replace(
            scan, dwi=None, bval=None, bvec=None,
            t2w=scan.t2w if "T2w" in plan.files else None,
            flair=(sub / "anat" / f"sub-{plan.label}_FLAIR.nii.gz"
                   if "FLAIR" in plan.files else None),
            # the import writes a case's mask whatever its set (Set A test scans are then
            # scored in the tumor too)
            tumor_mask=(ingest.expected_scan(bids_dir, plan.label, "B").tumor_mask
                        if plan.has_segmentation else None),
            tumor_dseg=(Path(bids_dir) / TUMOR_MASK_DERIVATIVE / f"sub-{plan.label}" / "anat"
                        / f"sub-{plan.label}_desc-tumor_dseg.nii.gz"
                        if plan.has_segmentation else None),
            adc=sub / "dwi" / f"sub-{plan.label}_adc.nii.gz" if plan.diffusion else None,
            brain_mask=(sub / "anat" / f"sub-{plan.label}_desc-brain_mask.nii.gz"
                        if "brain" in plan.files else None)))
    return scans


# ----------------------------------------------------------------------------- the import


def import_layout(
    source_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str,
    *,
    patterns: Mapping[str, Any] | None = None,
    tumor_labels: str | Iterable[int] | None = None,
    set_mode: str = "auto",
    keep_going: bool = False,
    on_error: Any = None,
) -> dict[str, Any]:
    """Import every case of a layout folder into the BIDS dataset ``out_dir``.

    Args:
        source_dir: the cohort's folder (one sub-folder per case); only read.
        out_dir: the BIDS dataset to write (missing, empty, or an earlier ``cesynth import``).
        layout: ``ucsf-pdgm`` or ``brats``.
        patterns: overrides of the layout's file-name patterns (see :data:`LAYOUTS`).
        tumor_labels: which segmentation labels form the binary tumor mask (see
            :func:`resolve_tumor_labels`).
        set_mode: ``auto`` (Set B when the case has a non-empty tumor mask, the SPEC's rule),
            ``A`` or ``B`` (every case; ``B`` needs a segmentation with the chosen labels).
        keep_going: on a bad case, report it through ``on_error`` and go on with the others.
        on_error: called with the :class:`InputError` of each case skipped under
            ``keep_going``.

    Returns:
        ``{"bids_dir", "layout", "imported": {label: {...}}, "skipped": {case: reason}}``.

    Raises:
        InputError: bad arguments, ``out_dir`` inside the source or holding another dataset,
            or (without ``keep_going``) the first bad case, before any case is written when
            the problem shows in the file names.
    """
    source, out = Path(source_dir), Path(out_dir)
    if set_mode not in SET_MODES:
        raise InputError("--set", f"{set_mode!r}: expected one of {', '.join(SET_MODES)}")
    _refuse_inside_source(source, out)
    plans = plan_import(source, layout, patterns)
    guard_dataset_target(out, IMPORT_GENERATOR)
    spec = layout_spec(layout, patterns)
    for variant in spec["variants"].values():
        resolve_tumor_labels(tumor_labels, variant)  # a bad value stops before any writing
    out_existed = out.exists()
    skipped: dict[str, str] = {}
    todo = []
    for plan in plans:
        problem = plan.problem
        if problem is None and set_mode == "B" and not plan.has_segmentation:
            seg_pattern = spec["variants"][plan.variant]["patterns"]["seg"]
            problem = (f"{expected_name(plan.case, seg_pattern)}: missing (--set B needs a "
                       "tumor segmentation)")
        if problem is None and plan.has_segmentation:
            problem = _label_problem(plan, spec["variants"][plan.variant], tumor_labels)
        if problem is None:
            todo.append(plan)
            continue
        err = InputError(plan.case, problem)
        if not keep_going:
            raise err
        skipped[plan.case] = problem
        if on_error is not None:
            on_error(err)
    imported: dict[str, dict[str, Any]] = {}
    try:
        for plan in todo:
            variant = spec["variants"][plan.variant]
            try:
                imported[plan.label] = _import_case(plan, out, variant, tumor_labels, set_mode)
            except InputError as err:
                if not keep_going:
                    raise
                skipped[plan.case] = err.problem if err.who == plan.case else str(err)
                if on_error is not None:
                    on_error(err if err.who == plan.case else InputError(plan.case, str(err)))
    finally:
        if imported:
            _write_dataset_files(out, layout, imported, tumor_labels, set_mode)
        elif not out_existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing imported: leave no empty output folder behind
    return {"bids_dir": str(out), "layout": layout, "imported": imported, "skipped": skipped}


def _refuse_inside_source(source: Path, out: Path) -> None:
    source_real, out_real = source.resolve(), out.resolve()
    if out_real == source_real or source_real in out_real.parents:
        raise InputError(out, f"is inside the source folder {source}; refusing to write into "
                              "the source")


def _label_problem(plan: CasePlan, variant: Mapping[str, Any],
                   tumor_labels: str | Iterable[int] | None) -> str | None:
    """What is wrong with the case's segmentation labels, read before any case is written: a
    tumor label asked that the layout does not define, or a label in the map that the layout
    does not define (a map of another release's labelling would give a wrong mask, or none
    and the patient in Set A); None when fine or unreadable (the import reports that)."""
    try:
        data = np.asanyarray(_load(plan, "seg").dataobj)
    except InputError:
        return None
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        return None  # not a label map: the import says so
    asked = resolve_tumor_labels(tumor_labels, variant)
    present = sorted(int(v) for v in np.unique(data) if v != 0)
    known = sorted(int(v) for v in variant["labels"])

    def shown(values: Iterable[int]) -> str:
        return ", ".join(str(v) for v in values) or "none"

    seg = plan.files["seg"].name
    unknown_asked = [v for v in asked if v not in known]
    if unknown_asked:
        return (f"{seg}: tumor labels {shown(asked)} asked, labels found {shown(present)}; "
                f"{shown(unknown_asked)} not a label of the {plan.variant} layout "
                f"({shown(known)})")
    unknown_present = [v for v in present if v not in known]
    if unknown_present:
        return (f"{seg}: labels found {shown(present)}, tumor labels {shown(asked)} asked; "
                f"label {shown(unknown_present)} is not a label of the {plan.variant} layout "
                f"({shown(known)}): another release's labelling or the wrong --layout")
    return None


def _import_case(plan: CasePlan, out: Path, variant: Mapping[str, Any],
                 tumor_labels: str | Iterable[int] | None, set_mode: str) -> dict[str, Any]:
    """Stage every file of one case, then move them into place (all or nothing)."""
    sub = f"sub-{plan.label}"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".cesynth-import-{plan.label}-", dir=out) as tmp:
        stage = Path(tmp)
        record: dict[str, Any] = {"source_case": plan.case, "variant": plan.variant,
                                  "files": {}, "missing": []}
        reference = _load(plan, "ceT1w")
        for key in _ANAT_SUFFIX:
            if key not in plan.files:
                record["missing"].append(key)
                continue
            img = reference if key == "ceT1w" else _load(plan, key)
            relative = Path(sub) / "anat" / f"{sub}_{_ANAT_SUFFIX[key]}.nii.gz"
            _save_clean(img, stage / relative)
            sidecar = {"SourceFile": plan.files[key].name, "SourceLayout": plan.variant}
            if key == "ceT1w":
                sidecar["ContrastBolusIngredient"] = "GADOLINIUM"
            write_json(sidecar, stage / relative.with_name(relative.name[:-7] + ".json"))
            record["files"][key] = str(relative)
            record.setdefault("on_ceT1w_grid", {})[key] = _on_grid(img, reference)
        diffusion = plan.diffusion
        if diffusion is None:
            record["missing"].append("adc")
        else:
            source_kind, path = diffusion
            img = _load(plan, "adc" if source_kind == "ADC" else "md")
            try:  # the unit predict and the workflow would read the map in, or none
                detect_adc_unit(np.asanyarray(img.get_fdata(dtype=np.float32)))
            except InputError as err:
                raise InputError(plan.case, f"{path.name}: {err.problem}") from err
            relative = Path(sub) / "dwi" / f"{sub}_adc.nii.gz"
            _save_clean(img, stage / relative)
            write_json({"Source": source_kind, "SourceFile": path.name,
                        "SourceLayout": plan.variant,
                        "Description": "ADC map" if source_kind == "ADC" else
                        "mean diffusivity of the DTI fit (FSL DTIFIT MD), used as the ADC map",
                        "Units": "as in the source file"},
                       stage / relative.with_name(f"{sub}_adc.json"))
            record["files"]["adc"] = str(relative)
            record["adc_source"] = source_kind
            record.setdefault("on_ceT1w_grid", {})["adc"] = _on_grid(img, reference)
        if "brain" in plan.files:
            record["files"]["brain_mask"] = _stage_brain_mask(plan, stage, reference)
        tumor = _stage_tumor(plan, stage, variant, tumor_labels, reference)
        record["files"].update(tumor.pop("files"))
        record.update(tumor)
        if set_mode == "B" and "tumor_mask" not in record["files"]:
            raise InputError(plan.case, f"{plan.files['seg'].name}: none of the tumor labels "
                                        f"{record['tumor_labels']} present (--set B needs a "
                                        "tumor mask)")
        record["set"] = set_mode if set_mode in ("A", "B") else (
            "B" if "tumor_mask" in record["files"] else "A")
        _move_into_place(stage, out, sub)
    return record


def _stage_brain_mask(plan: CasePlan, stage: Path, reference: Any) -> str:
    """The release's brain mask, binary (non-zero = brain), on the T1c grid."""
    path = plan.files["brain"]
    img = _load(plan, "brain")
    check_same_grid(img, reference, plan.case, "the T1c",
                    hint=f"{path.name} must share the T1c's grid")
    sub = f"sub-{plan.label}"
    relative = Path(sub) / "anat" / f"{sub}_desc-brain_mask.nii.gz"
    _save_mask(np.asanyarray(img.dataobj) != 0, img, stage / relative)
    write_json({"Description": "brain mask of the source release (non-zero = brain)",
                "SourceFile": path.name, "SourceLayout": plan.variant},
               stage / relative.with_name(f"{sub}_desc-brain_mask.json"))
    return str(relative)


def _save_mask(mask: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    header = _clean_header(like.header)
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(mask.astype(np.uint8), like.affine, header=header)
    out.header.set_slope_inter(1.0, 0.0)
    _save_image(out, path)


def _stage_tumor(plan: CasePlan, stage: Path, variant: Mapping[str, Any],
                 tumor_labels: str | Iterable[int] | None, reference: Any) -> dict[str, Any]:
    labels = resolve_tumor_labels(tumor_labels, variant)
    if not plan.has_segmentation:
        return {"tumor_labels": labels, "files": {}}
    seg_path = plan.files["seg"]
    img = _load(plan, "seg")
    check_same_grid(img, reference, plan.case, "the T1c",
                    hint=f"{seg_path.name} must share the T1c's grid")
    data = np.asanyarray(img.dataobj)
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise InputError(plan.case, f"{seg_path.name}: not a label map (non-integer values)")
    sub = f"sub-{plan.label}"
    folder = TUMOR_MASK_DERIVATIVE / sub / "anat"
    dseg = folder / f"{sub}_desc-tumor_dseg.nii.gz"
    _save_clean(img, stage / dseg)
    present = sorted(int(v) for v in np.unique(data) if v != 0)
    names = {str(value): name for value, name in variant["labels"].items()}
    write_json({"Description": "the source's tumor segmentation, labels unchanged",
                "SourceFile": seg_path.name, "SourceLayout": plan.variant,
                "Labels": {**{"0": "background"}, **names},
                "LabelsPresent": present, "TumorMaskLabels": labels},
               stage / folder / f"{sub}_desc-tumor_dseg.json")
    files = {"tumor_dseg": str(dseg)}
    mask = np.isin(data, labels)
    n_voxels = int(mask.sum())
    if n_voxels:
        relative = folder / f"{sub}_desc-tumor_mask.nii.gz"
        _save_mask(mask, img, stage / relative)
        meaning = ", ".join(names.get(str(v), "?") for v in labels)
        write_json({"Description": f"binary tumor mask: the segmentation's labels {labels} "
                                   f"({meaning})",
                    "Sources": [str(dseg.name)], "TumorMaskLabels": labels},
                   stage / relative.with_name(f"{sub}_desc-tumor_mask.json"))
        files["tumor_mask"] = str(relative)
    return {"tumor_labels": labels, "tumor_voxels": n_voxels, "labels_present": present,
            "files": files}


def _move_into_place(stage: Path, out: Path, sub: str) -> None:
    """Swap the staged subject folders (raw and tumor-mask derivative) for any earlier ones,
    each by one rename, so a re-import leaves no file of the earlier import behind."""
    for relative in (Path(sub), TUMOR_MASK_DERIVATIVE / sub):
        new, target, old = stage / relative, out / relative, stage / ".old" / relative
        if target.exists():
            old.parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, old)
        if new.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(new, target)


def _load(plan: CasePlan, key: str) -> nib.Nifti1Image:
    path = plan.files[key]
    try:
        with quiet_nibabel():  # its header repairs are checked below, as written
            img = nib.load(str(path))
        np.asanyarray(img.dataobj)  # full read: a truncated file fails here, on this case
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(plan.case, f"{path.name}: unreadable NIfTI "
                                    f"({type(err).__name__}: {err})") from err
    try:  # nibabel reads a pixdim of 0 as 1 mm: the written image would claim that size
        check_voxel_sizes(img, path.name)
    except InputError as err:
        raise InputError(plan.case, f"{path.name}: {err.problem}") from err
    if not isinstance(img, nib.Nifti1Image):  # NIfTI-2 and others: convert to NIfTI-1
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    return img


def _clean_header(header: nib.Nifti1Header) -> nib.Nifti1Header:
    """A copy of ``header`` with the free-text fields cleared and no extensions."""
    clean = header.copy()
    for name in CLEARED_HEADER_FIELDS:
        clean[name] = b""
    clean.extensions.clear()
    return clean


def _save_clean(img: nib.Nifti1Image, path: Path) -> None:
    """Write ``img`` with the same voxels (stored values, scaling, dtype) and a cleaned header."""
    header = _clean_header(img.header)
    proxy = img.dataobj
    if nib.is_proxy(proxy):  # stored values and their scaling, exactly as in the source
        out = nib.Nifti1Image(np.asanyarray(proxy.get_unscaled()), img.affine, header=header)
        out.header.set_slope_inter(proxy.slope, proxy.inter)
    else:
        out = nib.Nifti1Image(np.asanyarray(proxy), img.affine, header=header)
    _save_image(out, path)


def _save_image(img: nib.Nifti1Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _on_grid(img: Any, reference: Any) -> bool:
    try:
        check_same_grid(img, reference, "")
    except InputError:
        return False
    return True


def _write_dataset_files(out: Path, layout: str, imported: Mapping[str, Mapping[str, Any]],
                         tumor_labels: str | Iterable[int] | None, set_mode: str) -> None:
    """participants.tsv (merged with an earlier import's rows), descriptions."""
    rows = pd.DataFrame([{"participant_id": f"sub-{label}", "set": record["set"],
                          "source_case": record["source_case"]}
                         for label, record in imported.items()])
    tsv = out / "participants.tsv"
    if tsv.is_file():
        from cesynth.io import read_tsv

        earlier = read_tsv(tsv)
        if {"participant_id", "set"} <= set(earlier.columns):
            earlier = earlier[~earlier["participant_id"].isin(rows["participant_id"])]
            rows = pd.concat([earlier, rows], ignore_index=True)
    rows = rows.sort_values("participant_id").reset_index(drop=True)
    write_tsv(rows[[c for c in ("participant_id", "set", "source_case") if c in rows]], tsv)
    write_json({"participant_id": {"Description": "subject label: the public case ID's letters "
                                                  "and digits"},
                "set": {"Description": "evaluation set",
                        "Levels": {"A": "brain-region evaluation only",
                                   "B": "has an expert tumor mask (derivatives/tumor_masks)"}},
                "source_case": {"Description": f"the public case ID in the {layout} release"}},
               out / "participants.json")
    labels_text = (tumor_labels if isinstance(tumor_labels, str) or tumor_labels is None
                   else [int(v) for v in tumor_labels]) or "enhancing"
    generated = [{"Name": IMPORT_GENERATOR, "Version": __version__,
                  "Description": f"cesynth import --layout {layout}"}]
    write_json({"Name": f"{layout} cohort (imported by cesynth)", "BIDSVersion": "1.9.0",
                "DatasetType": "raw", "GeneratedBy": generated,
                "SourceDatasets": [{"Description": LAYOUTS[layout]["description"]}],
                "CesynthImport": {"layout": layout, "tumor_labels": labels_text,
                                  "set": set_mode}},
               out / "dataset_description.json")
    if any("tumor_dseg" in record["files"] for record in imported.values()):
        write_json({"Name": "tumor masks and segmentations (expert, from the source release)",
                    "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                    "GeneratedBy": generated},
                   out / TUMOR_MASK_DERIVATIVE / "dataset_description.json")


def import_report(result: Mapping[str, Any]) -> dict[str, Any]:
    """A compact JSON-ready summary of :func:`import_layout`'s result (for the CLI and rule)."""
    imported = result["imported"]
    return {"bids_dir": result["bids_dir"], "layout": result["layout"],
            "imported": len(imported), "skipped": result["skipped"],
            "set": {label: record["set"] for label, record in imported.items()},
            "adc_source": {label: record.get("adc_source") for label, record in imported.items()},
            "labels_present": {label: record["labels_present"]
                               for label, record in imported.items() if "labels_present" in record},
            "missing": {label: record["missing"] for label, record in imported.items()
                        if record["missing"]}}


__all__ = ["CLEARED_HEADER_FIELDS", "IMPORT_GENERATOR", "SET_MODES", "TUMOR_MASK_DERIVATIVE",
           "import_layout", "import_report", "planned_scans"]
