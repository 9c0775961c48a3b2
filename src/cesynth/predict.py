"""A new patient from raw scans to a synthetic CE-T1 (``cesynth predict``), preprocessing included.

A new patient has no CE-T1, so the T1 is the reference space. Training registers every image to
the CE-T1, which shares the T1's 3D geometry, so the T1 plays the CE-T1's part here:

1. ADC: the given map, or fitted from the DWI at b = 0, 500, 1000 (:mod:`cesynth.adc`).
2. Registration to the T1 (:mod:`cesynth.registration`, seeded): the T2 and the FLAIR, and the
   DWI's b0 carrying the fitted ADC (or the given ADC map itself).
3. Brain mask of the T1 (:mod:`cesynth.brainmask`) with the method the training masks were made
   with (the checkpoint's record, :mod:`cesynth.preprocessing`).
4. Model grid and normalisation as the checkpoint's ``preprocessing`` record says
   (:func:`cesynth.normalise.prepare_subject`); a checkpoint without it is refused unless the
   caller names the grid and the method.

The checkpoint's preprocessing record is applied exactly: the ADC fit's b-values, tolerance and
clip limits, the brain-mask method, the registration seed and method, the model grid and the
normalisation with its parameters. What cannot be applied stops the prediction with one line
naming it (the recorded brain-mask method not installed here, another registration method)
unless the caller overrides it explicitly (``brainmask_method``, ``model_grid``, ``normalise``,
``seed``); overrides are recorded in the sidecar (``PreprocessingOverrides``), and what
prediction does otherwise by necessity (a mask from the T1 for a model trained on CE-T1 masks,
another cesynth version) in ``PreprocessingDifferences``.
5. Synthesis on the model grid (:func:`cesynth.inference.synthesize_subject`). A modality the
   model takes but the patient lacks (T2 or ADC) is synthesized from the normalised T1 by the
   release's cascade model (T1 -> T2, T1 -> ADC; :func:`cesynth.release.resolve_cascade`) with
   the same brain mask and foreground slices, or else filled with zeros (the paper's rule; a
   missing FLAIR always: there is no T1 -> FLAIR cascade); the
   sidecar records which (``FilledInputs``). A cascade model trained with another model grid or
   normalisation is refused.
6. Back to the native T1 grid: linear interpolation weighted by the model-grid brain mask (so
   the brain's edge is not darkened by the zeros outside it), 0 outside the T1 brain mask.

Any input may be a DICOM series folder instead of a NIfTI file: it is converted with dcm2niix
in the work folder (:func:`cesynth.dicom.convert_series`; no sidecar kept, header text blanked)
before step 1. Besides the NIfTI output, ``out_dicom`` writes the synthetic image as a DICOM
series marked synthetic and carrying no patient identity (:mod:`cesynth.synthetic_dicom`).

Intermediate files live in a work folder, temporary unless the caller keeps it; the inputs are
only read. Everything is computed before anything is written, and the outputs (the image, marked
synthetic in its header, and its JSON sidecar, which names files by base name only) land
together or not at all.

This module runs the steps and writes the outputs and their sidecars; the scans' checks and
registration are in :mod:`cesynth.predict_inputs`, the models and the synthesis in
:mod:`cesynth.predict_synthesis`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cesynth import dicom, registration, synthetic_dicom
from cesynth.inference import Generator, provenance_sidecar
from cesynth.io import (
    InputError,
    atomic_path,
    check_output_file,
    check_outputs,
    load_nifti,
    read_json,
    same_file_key,
    save_nifti,
    write_json,
)
from cesynth.predict_inputs import (
    PathLike,
    Preprocessing,
    Scans,
    StepTimer,
    adc_source,
    check_cascade_files,
    check_scans,
    lacking_inputs,
    register_inputs,
    resolve_preprocessing,
    unused_inputs,
)
from cesynth.predict_synthesis import (
    is_mlflow_uri,
    load_cascades,
    load_model,
    synthesize_on_t1_grid,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")

SPACE = "T1w"
"""The space of the synthetic image: the patient's native T1 grid."""


def predict_patient(
    t1: PathLike,
    t2: PathLike | None = None,
    adc: PathLike | None = None,
    dwi: PathLike | None = None,
    bval: PathLike | None = None,
    bvec: PathLike | None = None,
    *,
    model: PathLike,
    out: PathLike,
    out_model_grid: PathLike | None = None,
    out_dicom: PathLike | None = None,
    dicom_study_from_t1: bool = False,
    brainmask_method: str | None = None,
    model_grid: tuple[int, int, int] | None = None,
    normalise: str | None = None,
    threads: int = 1,
    device: str = "cpu",
    seed: int | None = None,
    work_dir: PathLike | None = None,
    cascade: Mapping[str, PathLike | None] | None = None,
    use_cascade: bool = True,
    flair: PathLike | None = None,
    coregistered: bool = False,
) -> dict[str, Any]:
    """Synthesize the CE-T1 of a new patient from raw scans and write it on the T1's grid.

    Args:
        t1: the pre-contrast T1 NIfTI (the reference space). Each image input may also be a
            folder holding one DICOM series.
        t2: the T2 NIfTI; None: missing (synthesized by a cascade model if there is one,
            else zero-filled, if the model takes it).
        adc: an ADC map NIfTI (mm2/s), any grid; exclusive with ``dwi``.
        dwi: a 4D DWI NIfTI with b = 0, 500, 1000; its ADC is fitted. Needs ``bval``, ``bvec``
            (for a DICOM series: taken from the series unless given).
        bval: the DWI's FSL ``.bval``.
        bvec: the DWI's FSL ``.bvec``.
        model: a checkpoint file or an MLflow ``runs:/`` or ``models:/`` URI
            (:func:`cesynth.release.resolve_model`).
        out: the synthetic image (``.nii`` or ``.nii.gz``); its sidecar is ``<stem>.json``.
        out_model_grid: also write the model-grid prediction here (with its sidecar).
        out_dicom: also write the synthetic image as a DICOM series into this folder (absent
            or empty), marked synthetic, without patient identity.
        dicom_study_from_t1: file that series with the T1's study (the T1 must be a DICOM
            series): the patient and study attributes a PACS needs are copied from it into the
            DICOM files only.
        brainmask_method: overrides the checkpoint's brain-mask method (recorded in the
            sidecar); without it the recorded method must be installed here.
        model_grid: overrides (or, for an old checkpoint, supplies) the model grid.
        normalise: overrides (or supplies) the normalisation method.
        threads: CPU threads for registration and brain masking.
        device: where the model runs: ``cpu``, ``cuda`` or ``auto``.
        seed: overrides the registrations' recorded random seed.
        work_dir: keep the intermediate files in this folder; default a temporary folder,
            removed at the end.
        cascade: cascade checkpoints by target (``T2w``, ``adc``), overriding those the model
            holds (:func:`cesynth.release.resolve_cascade`).
        use_cascade: False: fill every missing input with zeros, cascade models or not.
        flair: the FLAIR NIfTI (or DICOM series folder); None: missing (zero-filled if the
            model takes it).
        coregistered: the inputs are declared aligned on the T1's grid (``--coregistered``):
            checked to be on it and copied, not registered; an input off the grid stops it.

    Returns:
        A summary: ``output``, ``sidecar`` (and ``output_model_grid``,
        ``sidecar_model_grid``), ``input_modalities`` (acquired), ``missing_modalities`` (not
        acquired), ``filled_inputs`` (missing input -> ``cascade`` or ``zeros``),
        ``cascade_models`` (input -> cascade checkpoint base name),
        ``unused_inputs``, ``adc_source``, ``preprocessing`` (what was applied, with its
        ``overrides`` and ``differences``), ``brainmask``,
        ``registration`` (mutual information before and after, per modality),
        ``foreground_slices``, ``work_dir`` (None when removed) and ``seconds`` per step.

    Raises:
        InputError: a missing or unreadable input, an invalid combination of inputs, an
            unusable model or checkpoint without preprocessing record, a recorded
            preprocessing step that cannot run here (not overridden), a cascade model trained
            with another model grid or normalisation, or a failing step. Nothing is written at
            the output paths then.
    """
    timer = StepTimer()
    explicit = check_cascade_files(cascade, use_cascade=use_cascade)
    given = {"t1": t1, "t2": t2, "adc": adc, "dwi": dwi, "bval": bval, "bvec": bvec,
             "flair": flair}
    series_dirs = [Path(p) for p in given.values() if p is not None and Path(p).is_dir()]
    checkpoints = _checkpoint_files(model, explicit, use_cascade)
    if work_dir is not None:
        _check_work_folder(work_dir, [p for p in given.values() if p is not None], checkpoints)
    if out_dicom is not None:
        synthetic_dicom.check_output_folder(out_dicom)
    study = _dicom_study(t1, out_dicom) if dicom_study_from_t1 else None
    with _work_folder(work_dir) as work:
        with timer("dicom"):
            scans = check_scans(**_converted_series(given, work / "dicom"))
        targets = _output_paths(out, out_model_grid, scans, out_dicom, series_dirs,
                                checkpoints=checkpoints)
        t1_img = load_nifti(scans.t1)
        with timer("load_model"):
            generator = load_model(model, work / "model", device)
        prep = resolve_preprocessing(generator, str(model), model_grid=model_grid,
                                     normalise=normalise, brainmask_method=brainmask_method,
                                     seed=seed)
        lacking = lacking_inputs(scans, generator.settings.modalities)
        with timer("load_cascade"):
            cascades = load_cascades(model, lacking if use_cascade else [], explicit, prep,
                                     work / "model", device)
        native, registered = register_inputs(scans, generator.settings.modalities, work, timer,
                                             threads=threads, seed=prep.registration_seed,
                                             adc=prep.adc, coregistered=coregistered)
        result = synthesize_on_t1_grid(generator, prep, native, t1_img, work, timer,
                                       threads=threads, cascades=cascades)
        filled = _fill_record(generator, lacking, cascades)
        record = _provenance(read_json(result["synthesis"]["sidecar"]), scans, model, prep,
                             result["mask_info"], registered=list(registered), filled=filled,
                             adc_info=registered.get("adc"), coregistered=coregistered)
        record["DICOMFiledWithT1Study"] = study is not None
        record["SourceFormat"] = {name: "DICOM series" if Path(path).is_dir() else "NIfTI"
                                  for name, path in given.items()
                                  if path is not None and name not in ("bval", "bvec")}
        with timer("write"):
            _write_outputs(targets, result["prediction"], t1_img.affine, record,
                           result["model_grid_image"] if out_model_grid is not None else None,
                           study=study)
    return {
        **{key: str(path) for key, path in targets.items()},
        "input_modalities": filled["InputModalities"],
        "missing_modalities": filled["MissingModalities"],
        "filled_inputs": filled["FilledInputs"],
        "cascade_models": {m: g.source for m, g in cascades.items()},
        "unused_inputs": unused_inputs(scans, generator.settings.modalities),
        "adc_source": adc_source(scans),
        "preprocessing": {"model_grid": list(prep.model_grid), "normalise": prep.normalise,
                          "normalise_options": dict(prep.normalise_options),
                          "brainmask": result["mask_info"]["method"],
                          "brainmask_reference": "T1w", "adc": dict(prep.adc),
                          "registration_seed": prep.registration_seed,
                          "coregistered": coregistered,
                          "overrides": dict(prep.overrides),
                          "differences": dict(prep.differences)},
        "brainmask": {key: result["mask_info"][key] for key in ("method", "volume_ml")},
        "registration": registered,
        "foreground_slices": result["synthesis"]["foreground_slices"],
        "work_dir": str(work_dir) if work_dir is not None else None,
        "seconds": timer.seconds(),
    }


# ---------------------------------------------------------------- output paths


def _converted_series(given: Mapping[str, PathLike | None], folder: Path
                      ) -> dict[str, PathLike | None]:
    """The inputs with each DICOM series folder replaced by its conversion to NIfTI."""
    files = dict(given)
    for name in ("t1", "t2", "adc", "dwi", "flair"):
        if given.get(name) is None or not Path(given[name]).is_dir():
            continue
        # a scanner's ADC map is in its unit only with display scaling (Philips precise-float
        # values are not): then adc_maps.detect_adc_unit reads the unit as for any given map
        converted = dicom.convert_series(given[name], folder / f"{name}_from-dicom",
                                         display_scaling=name == "adc")
        files[name] = converted["image"]
        if name == "dwi":
            for gradients in ("bval", "bvec"):
                files[gradients] = given[gradients] or converted.get(gradients)
    return files


def _dicom_study(t1: PathLike, out_dicom: PathLike | None) -> dict[str, str]:
    """The T1 series' study attributes for the synthetic series (checked before any work)."""
    if out_dicom is None:
        raise InputError("--dicom-study-from-t1", "needs --out-dicom")
    if not Path(t1).is_dir():
        raise InputError(t1, "--dicom-study-from-t1 needs the T1 as a DICOM series folder")
    return synthetic_dicom.study_identity(t1)


def _checkpoint_files(model: PathLike, explicit: Mapping[str, Path], use_cascade: bool
                      ) -> list[Path]:
    """The local checkpoint files predict reads: the model (unless an MLflow URI), the cascade
    checkpoints given by hand and, for a model file, the sibling cascades it would use."""
    files = list(explicit.values())
    if not is_mlflow_uri(model):
        files.append(Path(model))
        if use_cascade and Path(model).is_file():
            from cesynth.release import resolve_cascade

            files.extend(resolve_cascade(model).values())
    return files


def _check_work_folder(work_dir: PathLike, inputs: Sequence[PathLike],
                       checkpoints: Sequence[Path]) -> None:
    """Fail before any work when the kept work folder lies in (or is) a folder holding an
    input: the folder of an input file, model or cascade checkpoint, or a DICOM series folder.

    Raises:
        InputError: on ``work_dir``, naming that folder.
    """
    work = Path(same_file_key(work_dir))
    for source in [*inputs, *checkpoints]:
        path = Path(source)
        holder = path if path.is_dir() else path.parent
        if work.is_relative_to(same_file_key(holder)):
            raise InputError(work_dir, f"--keep-work lies inside the input folder {holder} "
                                       f"(it holds {path.name}); give it a folder of its own")


def _output_paths(out: PathLike, out_model_grid: PathLike | None, scans: Scans,
                  out_dicom: PathLike | None = None,
                  series_dirs: Sequence[Path] = (),
                  checkpoints: Sequence[Path] = ()) -> dict[str, Path]:
    """The output files by summary key, checked against each other and against the inputs
    (files, the model and cascade checkpoints, and DICOM series folders: nothing may be
    written inside one), and each checked to be writable (a file name with the right suffix
    in a folder that can be written)."""
    targets = {"output": Path(out), "sidecar": sidecar_path(out)}
    if out_model_grid is not None:
        targets.update(output_model_grid=Path(out_model_grid),
                       sidecar_model_grid=sidecar_path(out_model_grid))
    if out_dicom is not None:
        targets["output_dicom"] = Path(out_dicom)
    check_outputs(targets.values(), [*scans.files(), *checkpoints], series_dirs)
    for key, path in targets.items():
        if key != "output_dicom":
            check_output_file(path, (".json",) if key.startswith("sidecar") else NIFTI_SUFFIXES)
    return targets


def sidecar_path(image_path: PathLike) -> Path:
    """The JSON sidecar beside an image: the same stem, ``.json``.

    Raises:
        InputError: the name does not end in ``.nii`` or ``.nii.gz``.
    """
    path = Path(image_path)
    for suffix in (".nii.gz", ".nii"):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[:-len(suffix)] + ".json")
    raise InputError(path, "output image must end in .nii or .nii.gz")


# ---------------------------------------------------------------- outputs


def _fill_record(generator: Generator, lacking: Sequence[str],
                 cascades: Mapping[str, Generator]) -> dict[str, Any]:
    """The sidecar's record of the inputs: acquired, not acquired, and how each was filled.

    Args:
        generator: the CE-T1 model.
        lacking: its inputs the patient lacks, in model order.
        cascades: the cascade models used, by target (the other lacking inputs are zeros).

    Returns:
        ``Description``, ``InputModalities`` (acquired), ``MissingModalities`` (not
        acquired), ``MissingModalityFill`` (``zeros``, ``cascade`` or ``cascade, zeros``),
        ``FilledInputs`` (input -> ``cascade`` or ``zeros``) and ``CascadeModels`` (input ->
        ``Checkpoint`` base name, ``CheckpointSHA256``, ``Model``).
    """
    fills = {m: "cascade" if m in cascades else "zeros" for m in lacking}
    acquired = [m for m in generator.settings.modalities if m not in fills]
    notes = [f"{m} synthesized from the T1 by a cascade model" if how == "cascade"
             else f"{m} filled with zeros" for m, how in fills.items()]
    description = provenance_sidecar(generator, acquired, [], (0, 0))["Description"]
    if notes:
        description += f" Inputs not acquired: {'; '.join(notes)}."
    return {
        "Description": description,
        "InputModalities": acquired,
        "MissingModalities": list(fills),
        "MissingModalityFill": ", ".join(sorted(set(fills.values()))) or "zeros",
        "FilledInputs": fills,
        "CascadeModels": {m: {"Checkpoint": g.source, "CheckpointSHA256": g.checkpoint_sha256,
                              "Model": g.settings.model} for m, g in cascades.items()},
    }


def _provenance(inference_sidecar: Mapping[str, Any], scans: Scans, model: PathLike,
                prep: Preprocessing, mask_info: Mapping[str, Any], *,
                registered: Sequence[str], filled: Mapping[str, Any],
                adc_info: Mapping[str, Any] | None = None,
                coregistered: bool = False) -> dict[str, Any]:
    """The native-space sidecar: the inference provenance with the raw inputs as sources and
    the inputs the patient lacks recorded as not acquired, with how each was filled."""
    record = {key: value for key, value in inference_sidecar.items()
              if key != "ForegroundSlices"}
    record.update(filled)
    record.update({
        "Space": SPACE,
        "Sources": [p.name for p in scans.files()],
        "ModelSource": _model_label(model),
        "Preprocessing": {
            "Reference": "T1w (native grid; every input registered to it)",
            "Registered": list(registered),
            "Registration": (registration.IDENTITY_METHOD if coregistered else
                             "ANTs rigid then affine, Mattes mutual information, seeded"),
            "RegistrationSeed": prep.registration_seed,
            "ADC": _adc_label(scans, prep.adc, adc_info),
            "BrainMaskMethod": mask_info["method"],
            "BrainMaskReference": "T1w",
            "ModelGrid": list(prep.model_grid),
            "Normalisation": prep.normalise,
            "NormalisationOptions": dict(prep.normalise_options),
            "ModelGridForegroundSlices": inference_sidecar.get("ForegroundSlices"),
            "BackToNative": "linear, weighted by the model-grid brain mask; 0 outside the "
                            "T1 brain mask",
        },
        "ModelPreprocessing": dict(prep.record),
        "PreprocessingOverrides": {k: dict(v) for k, v in prep.overrides.items()},
        "PreprocessingDifferences": {k: dict(v) for k, v in prep.differences.items()},
    })
    return record


def _model_label(model: PathLike) -> str:
    text = os.fspath(model)
    return text if is_mlflow_uri(text) else Path(text).name


def _adc_label(scans: Scans, settings: Mapping[str, Any],
               info: Mapping[str, Any] | None = None) -> str | None:
    if scans.dwi is not None:
        used = (info or {}).get("b_values") or settings["b_values"]
        shells = ", ".join(f"{round(b):g}" for b in used)
        if info is not None and info.get("preferred_shells") is False:
            preferred = ", ".join(f"{b:g}" for b in settings["b_values"])
            shells += f": the shells present; the method's are {preferred}"
        return (f"fitted from the DWI (b = {shells} s/mm2, tolerance "
                f"{settings['b_tolerance']:g}), clipped to [{settings['min_adc']:g}, "
                f"{settings['max_adc']:g}] mm2/s, carried by its b0 registration")
    if scans.adc is None:
        return None
    if info is None or "source" not in info:
        return "given map, registered to the T1"
    return f"{info['source']} ({info['unit_conversion']}), registered to the T1"


def _write_outputs(targets: Mapping[str, Path], prediction: np.ndarray, affine: np.ndarray,
                   record: Mapping[str, Any], model_grid_img: nib.Nifti1Image | None, *,
                   study: Mapping[str, str] | None = None) -> None:
    """Write every output, all or none: each file goes to a temporary file beside it, the
    DICOM series (into an absent or empty folder) is written last, and only then are the
    files renamed into place. A failure removes the temporary files and never a file that
    was at an output path before."""
    writers = [
        (targets["output"], lambda p: save_nifti(prediction, affine, p, synthetic=True)),
        (targets["sidecar"], lambda p: write_json(dict(record), p)),
    ]
    if model_grid_img is not None:
        grid_record = {**record, "Space": "model"}
        writers += [
            (targets["output_model_grid"], lambda p: save_nifti(
                np.asarray(model_grid_img.dataobj), model_grid_img.affine, p, synthetic=True)),
            (targets["sidecar_model_grid"], lambda p: write_json(grid_record, p)),
        ]
    with contextlib.ExitStack() as staged:
        for path, write in writers:
            write(staged.enter_context(atomic_path(path)))
        if "output_dicom" in targets:
            synthetic_dicom.write_synthetic_series(
                prediction, affine, targets["output_dicom"], inputs=record["InputModalities"],
                study=study)


# ---------------------------------------------------------------- helpers



@contextlib.contextmanager
def _work_folder(work_dir: PathLike | None) -> Iterator[Path]:
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="cesynth-predict-") as tmp:
        yield Path(tmp)


__all__ = ["SPACE", "predict_patient", "sidecar_path"]
