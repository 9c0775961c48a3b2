"""A new patient from raw scans to a synthetic CE-T1 (``cesynth predict``), preprocessing included.

A new patient has no CE-T1, so the T1 is the reference space. Training registers every image to
the CE-T1, which shares the T1's 3D geometry, so the T1 plays the CE-T1's part here:

1. ADC: the given map, or fitted from the DWI at b = 0, 500, 1000 (:mod:`cesynth.adc`).
2. Registration to the T1 (:mod:`cesynth.registration`, seeded): the T2, and the DWI's b0
   carrying the fitted ADC (or the given ADC map itself).
3. Brain mask of the T1 (:mod:`cesynth.brainmask`), with the checkpoint's method by default.
4. Model grid and normalisation as the checkpoint's ``preprocessing`` record says
   (:func:`cesynth.normalise.prepare_subject`); a checkpoint without it is refused unless the
   caller names the grid and the method.
5. Synthesis on the model grid (:func:`cesynth.inference.synthesize_subject`). A modality the
   model takes but the patient lacks (T2 or ADC) is synthesized from the normalised T1 by the
   release's cascade model (T1 -> T2, T1 -> ADC; :func:`cesynth.release.resolve_cascade`) with
   the same brain mask and foreground slices, or else filled with zeros (the paper's rule); the
   sidecar records which (``FilledInputs``). A cascade model trained with another model grid or
   normalisation is refused.
6. Back to the native T1 grid: linear interpolation weighted by the model-grid brain mask (so
   the brain's edge is not darkened by the zeros outside it), 0 outside the T1 brain mask.

Intermediate files live in a work folder, temporary unless the caller keeps it; the inputs are
only read. Everything is computed before anything is written, and the outputs (the image, marked
synthetic in its header, and its JSON sidecar, which names files by base name only) land
together or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from cesynth import adc as adc_fit
from cesynth import brainmask, registration
from cesynth.cache import load_model_grid_image, load_on_mask_grid, read_foreground_slices
from cesynth.inference import (
    Generator,
    load_generator,
    provenance_sidecar,
    synthesize,
    synthesize_subject,
)
from cesynth.io import InputError, load_nifti, read_json, save_nifti, write_json
from cesynth.normalise import NORMALISERS, ModelGrid, prepare_subject
from cesynth.release import (
    CASCADE_DIR,
    CASCADE_TARGETS,
    check_cascade,
    resolve_cascade,
    resolve_model,
)

PathLike = str | os.PathLike

SPACE = "T1w"
"""The space of the synthetic image: the patient's native T1 grid."""

_MIN_MASK_WEIGHT = 1e-3  # below this share of model-grid brain, a native voxel gets no value
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scans:
    """A patient's raw scans: the T1 (required) and whichever of T2, ADC or DWI exist.

    Args:
        t1: the pre-contrast T1.
        t2: the T2, or None.
        adc: an ADC map (mm2/s), or None.
        dwi: a 4D DWI with b = 0, 500, 1000, or None (exclusive with ``adc``).
        bval: the DWI's FSL ``.bval`` (with ``dwi`` only).
        bvec: the DWI's FSL ``.bvec`` (with ``dwi`` only).
    """

    t1: Path
    t2: Path | None = None
    adc: Path | None = None
    dwi: Path | None = None
    bval: Path | None = None
    bvec: Path | None = None

    def files(self) -> list[Path]:
        """The given files, in field order."""
        return [p for p in asdict(self).values() if p is not None]


@dataclass(frozen=True)
class Preprocessing:
    """How a patient's images are brought to the model: as the model's training images were.

    Args:
        model_grid: the RAS ``(x, y, z)`` model grid.
        normalise: a :data:`cesynth.normalise.NORMALISERS` method.
        brainmask: a :data:`cesynth.brainmask.METHODS` method, as requested.
    """

    model_grid: tuple[int, int, int]
    normalise: str
    brainmask: str


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
    brainmask_method: str | None = None,
    model_grid: tuple[int, int, int] | None = None,
    normalise: str | None = None,
    threads: int = 1,
    device: str = "cpu",
    seed: int = 0,
    work_dir: PathLike | None = None,
    cascade: Mapping[str, PathLike | None] | None = None,
    use_cascade: bool = True,
) -> dict[str, Any]:
    """Synthesize the CE-T1 of a new patient from raw scans and write it on the T1's grid.

    Args:
        t1: the pre-contrast T1 NIfTI (the reference space).
        t2: the T2 NIfTI; None: missing (synthesized by a cascade model if there is one,
            else zero-filled, if the model takes it).
        adc: an ADC map NIfTI (mm2/s), any grid; exclusive with ``dwi``.
        dwi: a 4D DWI NIfTI with b = 0, 500, 1000; its ADC is fitted. Needs ``bval``, ``bvec``.
        bval: the DWI's FSL ``.bval``.
        bvec: the DWI's FSL ``.bvec``.
        model: a checkpoint file or an MLflow ``runs:/`` or ``models:/`` URI
            (:func:`cesynth.release.resolve_model`).
        out: the synthetic image (``.nii`` or ``.nii.gz``); its sidecar is ``<stem>.json``.
        out_model_grid: also write the model-grid prediction here (with its sidecar).
        brainmask_method: overrides the checkpoint's brain-mask method (default ``auto``).
        model_grid: overrides (or, for an old checkpoint, supplies) the model grid.
        normalise: overrides (or supplies) the normalisation method.
        threads: CPU threads for registration and brain masking.
        device: where the model runs: ``cpu``, ``cuda`` or ``auto``.
        seed: the registrations' random seed.
        work_dir: keep the intermediate files in this folder; default a temporary folder,
            removed at the end.
        cascade: cascade checkpoints by target (``T2w``, ``adc``), overriding those the model
            holds (:func:`cesynth.release.resolve_cascade`).
        use_cascade: False: fill every missing input with zeros, cascade models or not.

    Returns:
        A summary: ``output``, ``sidecar`` (and ``output_model_grid``,
        ``sidecar_model_grid``), ``input_modalities`` (acquired), ``missing_modalities`` (not
        acquired), ``filled_inputs`` (missing input -> ``cascade`` or ``zeros``),
        ``cascade_models`` (input -> cascade checkpoint base name),
        ``unused_inputs``, ``adc_source``, ``preprocessing``, ``brainmask``,
        ``registration`` (mutual information before and after, per modality),
        ``foreground_slices``, ``work_dir`` (None when removed) and ``seconds`` per step.

    Raises:
        InputError: a missing or unreadable input, an invalid combination of inputs, an
            unusable model or checkpoint without preprocessing record, a cascade model trained
            with another model grid or normalisation, or a failing step. Nothing is written at
            the output paths then.
    """
    timer = _StepTimer()
    scans = check_scans(t1, t2, adc, dwi, bval, bvec)
    explicit = check_cascade_files(cascade, use_cascade=use_cascade)
    targets = _output_paths(out, out_model_grid, scans)
    t1_img = load_nifti(scans.t1)
    with _work_folder(work_dir) as work:
        with timer("load_model"):
            generator = _load_model(model, work / "model", device)
        prep = resolve_preprocessing(generator, str(model), model_grid=model_grid,
                                     normalise=normalise, brainmask_method=brainmask_method)
        _check_brainmask_method(prep.brainmask, from_checkpoint=brainmask_method is None)
        lacking = _lacking_inputs(scans, generator.settings.modalities)
        with timer("load_cascade"):
            cascades = _load_cascades(model, lacking if use_cascade else [], explicit, prep,
                                      work / "model", device)
        native, registered = _register_inputs(scans, generator.settings.modalities, work, timer,
                                              threads=threads, seed=seed)
        result = _synthesize_on_t1_grid(generator, prep, native, t1_img, work, timer,
                                        threads=threads, cascades=cascades)
        filled = _fill_record(generator, lacking, cascades)
        record = _provenance(read_json(result["synthesis"]["sidecar"]), scans, model, prep,
                             result["mask_info"], registered=list(registered), filled=filled)
        with timer("write"):
            _write_outputs(targets, result["prediction"], t1_img.affine, record,
                           result["model_grid_image"] if out_model_grid is not None else None)
    return {
        **{key: str(path) for key, path in targets.items()},
        "input_modalities": filled["InputModalities"],
        "missing_modalities": filled["MissingModalities"],
        "filled_inputs": filled["FilledInputs"],
        "cascade_models": {m: g.source for m, g in cascades.items()},
        "unused_inputs": _unused_inputs(scans, generator.settings.modalities),
        "adc_source": _adc_source(scans),
        "preprocessing": {"model_grid": list(prep.model_grid), "normalise": prep.normalise,
                          "brainmask": result["mask_info"]["method"]},
        "brainmask": {key: result["mask_info"][key] for key in ("method", "volume_ml")},
        "registration": registered,
        "foreground_slices": result["synthesis"]["foreground_slices"],
        "work_dir": str(work_dir) if work_dir is not None else None,
        "seconds": timer.seconds(),
    }


# ---------------------------------------------------------------- checks


def check_scans(t1: PathLike | None, t2: PathLike | None = None, adc: PathLike | None = None,
                dwi: PathLike | None = None, bval: PathLike | None = None,
                bvec: PathLike | None = None) -> Scans:
    """Check which scans were given and that each exists.

    Args:
        t1: the T1 (required).
        t2: the T2, or None.
        adc: an ADC map, or None.
        dwi: a DWI, or None; needs ``bval`` and ``bvec``; exclusive with ``adc``.
        bval: the DWI's ``.bval``.
        bvec: the DWI's ``.bvec``.

    Returns:
        The scans as paths.

    Raises:
        InputError: no T1, both ADC and DWI, a DWI without its gradient files (or gradient
            files without a DWI), or a file that does not exist.
    """
    if t1 is None:
        raise InputError("T1w", "the T1 is required")
    if adc is not None and dwi is not None:
        raise InputError(dwi, "give either an ADC map (--adc) or a DWI (--dwi), not both")
    if dwi is not None and (bval is None or bvec is None):
        raise InputError(dwi, "a DWI needs its --bval and --bvec files")
    if dwi is None and (bval is not None or bvec is not None):
        raise InputError(bval if bval is not None else bvec, "--bval/--bvec given without --dwi")
    scans = Scans(*(Path(p) if p is not None else None for p in (t1, t2, adc, dwi, bval, bvec)))
    for path in scans.files():
        if not path.is_file():
            raise InputError(path, "file not found")
    return scans


def check_cascade_files(cascade: Mapping[str, PathLike | None] | None, *,
                        use_cascade: bool = True) -> dict[str, Path]:
    """Check the cascade checkpoints given by hand (``--cascade-t2``, ``--cascade-adc``).

    Args:
        cascade: cascade target (``T2w``, ``adc``) -> checkpoint file, or None (not given).
        use_cascade: False when cascade models are turned off (``--no-cascade``).

    Returns:
        The given checkpoints by target, as paths.

    Raises:
        InputError: an unknown target, a file that does not exist, or checkpoints given with
            the cascade turned off.
    """
    given = {target: Path(p) for target, p in (cascade or {}).items() if p is not None}
    for target, path in given.items():
        if target not in CASCADE_TARGETS:
            raise InputError(f"cascade {target}", "unknown cascade target; expected one of "
                                                  f"{', '.join(CASCADE_TARGETS)}")
        if not path.is_file():
            raise InputError(path, "file not found")
    if given and not use_cascade:
        raise InputError("--no-cascade", "given with a cascade checkpoint (--cascade-t2 or "
                                         "--cascade-adc); choose one")
    return given


def resolve_preprocessing(generator: Generator, who: str, *,
                          model_grid: tuple[int, int, int] | None = None,
                          normalise: str | None = None,
                          brainmask_method: str | None = None) -> Preprocessing:
    """The preprocessing for a model: its checkpoint's record, with the caller's overrides.

    Args:
        generator: the loaded model (its ``preprocessing`` comes from the checkpoint).
        who: names the model in errors.
        model_grid: overrides the recorded model grid.
        normalise: overrides the recorded normalisation method.
        brainmask_method: overrides the recorded brain-mask method (default ``auto``).

    Returns:
        The preprocessing to apply.

    Raises:
        InputError: the grid or the normalisation is neither recorded nor given, or invalid.
    """
    stored = generator.preprocessing
    grid = model_grid if model_grid is not None else stored.get("model_grid")
    method = normalise if normalise is not None else stored.get("normalise")
    lacking = [name for name, value in (("model_grid", grid), ("normalise", method))
               if value is None]
    if lacking:
        what = ("has no preprocessing record" if not stored
                else f"has no {' or '.join(lacking)} in its preprocessing record")
        raise InputError(who, f"checkpoint {what} (written before it was stored?); pass the "
                              "model grid and normalisation used in training "
                              "(--model-grid X Y Z --normalise METHOD)")
    if method not in NORMALISERS:
        raise InputError(who, f"unknown normalisation {method!r}; expected one of "
                              f"{sorted(NORMALISERS)}")
    try:
        shape = ModelGrid(tuple(grid)).shape
    except (TypeError, ValueError) as err:
        raise InputError(who, f"invalid model grid {grid!r}") from err
    return Preprocessing(shape, str(method),
                         str(brainmask_method or stored.get("brainmask") or "auto"))


def _check_brainmask_method(method: str, *, from_checkpoint: bool) -> None:
    try:
        brainmask.resolve_method(method)
    except brainmask.MethodError as err:
        hint = (" (the checkpoint's method; choose another with --brainmask-method)"
                if from_checkpoint else "")
        raise InputError(err.who, err.problem + hint) from err


def _output_paths(out: PathLike, out_model_grid: PathLike | None,
                  scans: Scans) -> dict[str, Path]:
    """The output files by summary key, checked against each other and against the inputs."""
    targets = {"output": Path(out), "sidecar": sidecar_path(out)}
    if out_model_grid is not None:
        targets.update(output_model_grid=Path(out_model_grid),
                       sidecar_model_grid=sidecar_path(out_model_grid))
    inputs = {_same_file_key(p) for p in scans.files()}
    seen: set[str] = set()
    for path in targets.values():
        key = _same_file_key(path)
        if key in inputs:
            raise InputError(path, "output would overwrite an input")
        if key in seen:
            raise InputError(path, "two outputs share this path")
        seen.add(key)
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


def _same_file_key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


# ---------------------------------------------------------------- steps


def _load_model(model: PathLike, download_dir: Path, device: str) -> Generator:
    """Load the model a path or MLflow URI names; errors on a download name the URI."""
    path = resolve_model(model, download_dir)
    try:
        return load_generator(path, device)
    except InputError as err:
        if err.who != str(path) or path == Path(os.fspath(model)):
            raise
        raise InputError(os.fspath(model), err.problem) from err


def _lacking_inputs(scans: Scans, wanted: Sequence[str]) -> list[str]:
    """The model's inputs the patient lacks (not acquired), in model order."""
    acquired = {"T1w", *(["T2w"] if scans.t2 is not None else []),
                *(["adc"] if _adc_source(scans) is not None else [])}
    return [m for m in wanted if m not in acquired]


def _load_cascades(model: PathLike, lacking: Sequence[str], explicit: Mapping[str, Path],
                   prep: Preprocessing, download_dir: Path, device: str
                   ) -> dict[str, Generator]:
    """The cascade models for the inputs the patient lacks: given by hand, else the model's.

    Args:
        model: the CE-T1 model reference (:func:`cesynth.release.resolve_cascade` looks there).
        lacking: the model inputs the patient lacks; empty: no cascade is looked up.
        explicit: cascade checkpoints given by hand, by target (they win).
        prep: the CE-T1 model's preprocessing, which each cascade model must share.
        download_dir: where MLflow artifacts are downloaded.
        device: where the models run.

    Returns:
        Target -> loaded cascade model, for the lacking inputs that have one.

    Raises:
        InputError: naming the cascade checkpoint: unusable, not a T1 -> target model, or
            trained with another model grid or normalisation.
    """
    if not lacking:
        return {}
    found = dict(explicit)
    if any(m not in found for m in lacking):
        found = {**resolve_cascade(model, download_dir), **explicit}
    cascades = {}
    for target in (m for m in lacking if m in found):
        who = (f"{os.fspath(model)} {CASCADE_DIR}/{target}.pt"
               if target not in explicit and _is_mlflow_uri(model) else str(found[target]))
        cascades[target] = _load_cascade(found[target], target, who, prep, device)
    return cascades


def _load_cascade(path: Path, target: str, who: str, prep: Preprocessing,
                  device: str) -> Generator:
    """Load one cascade model and check it against the CE-T1 model's preprocessing."""
    try:
        cascade = load_generator(path, device)
    except InputError as err:
        if err.who != str(path):
            raise
        raise InputError(who, err.problem) from err
    check_cascade(cascade, target, who, model_grid=prep.model_grid, normalise=prep.normalise)
    return cascade


def _register_inputs(scans: Scans, wanted: Sequence[str], work: Path, timer: _StepTimer, *,
                     threads: int, seed: int) -> tuple[dict[str, Path], dict[str, Any]]:
    """The model's inputs on the T1 grid: the T1 itself, the T2 and the ADC registered to it.

    Inputs the model does not take are neither registered nor returned.

    Returns:
        ``(modality -> path on the T1 grid, modality -> MI before and after registration)``.
    """
    native: dict[str, Path] = {"T1w": scans.t1}
    info: dict[str, Any] = {}
    if scans.t2 is not None and "T2w" in wanted:
        native["T2w"] = work / "T2w_space-T1w.nii.gz"
        with timer("register_T2w"):
            info["T2w"] = _mi(registration.register_to_reference(
                scans.t1, scans.t2, native["T2w"], work / "from-T2w_to-T1w_xfm.mat",
                threads=threads, seed=seed))
    if _adc_source(scans) is not None and "adc" in wanted:
        native["adc"] = work / "adc_space-T1w.nii.gz"
        info["adc"] = _register_adc(scans, native["adc"], work, timer, threads=threads,
                                    seed=seed)
    return native, info


def _adc_source(scans: Scans) -> str | None:
    """``"dwi"`` (fitted), ``"adc"`` (given) or None (missing)."""
    return "dwi" if scans.dwi is not None else "adc" if scans.adc is not None else None


def _unused_inputs(scans: Scans, wanted: Sequence[str]) -> list[str]:
    given = {"T2w": scans.t2 is not None, "adc": _adc_source(scans) is not None}
    return [m for m, present in given.items() if present and m not in wanted]


def _register_adc(scans: Scans, out_path: Path, work: Path, timer: _StepTimer, *,
                  threads: int, seed: int) -> dict[str, float]:
    """Bring the ADC to the T1 grid: fitted from the DWI and carried by its b0, or registered."""
    if scans.dwi is None:
        with timer("register_adc"):
            return _mi(registration.register_to_reference(
                scans.t1, scans.adc, out_path, work / "from-adc_to-T1w_xfm.mat",
                threads=threads, seed=seed))
    dwi_adc = work / "adc.nii.gz"
    with timer("fit_adc"):
        adc_fit.fit_adc_file(scans.dwi, scans.bval, scans.bvec, dwi_adc)
    with timer("register_dwi"):
        return _mi(registration.register_dwi_to_reference(
            scans.t1, scans.dwi, scans.bval, dwi_adc, out_path, work / "from-dwi_to-T1w_xfm.mat",
            threads=threads, seed=seed))


def _mi(result: registration.RegistrationResult) -> dict[str, float]:
    return {"mi_before": result.mi_before, "mi_after": result.mi_after}


def _synthesize_on_t1_grid(generator: Generator, prep: Preprocessing,
                           native: Mapping[str, Path], t1_img: nib.Nifti1Image, work: Path,
                           timer: _StepTimer, *, threads: int,
                           cascades: Mapping[str, Generator] | None = None) -> dict[str, Any]:
    """Brain mask, model grid, synthesis and the way back to the T1 grid (nothing written out).

    Args:
        generator: the CE-T1 model.
        prep: its preprocessing.
        native: the acquired inputs on the T1 grid, by modality.
        t1_img: the T1 (the reference grid).
        work: the work folder.
        timer: records each step's time.
        threads: CPU threads for brain masking.
        cascades: cascade models for lacking inputs, by target; their outputs are the CE-T1
            model's inputs there.

    Returns:
        ``prediction`` (the T1-grid array), ``model_grid_image``, ``synthesis`` (the summary of
        :func:`cesynth.inference.synthesize_subject`) and ``mask_info`` (of the brain mask).
    """
    native_mask = work / "T1w_desc-brain_mask.nii.gz"
    with timer("brainmask"):
        mask_info = brainmask.brain_mask_file(native["T1w"], native_mask, prep.brainmask,
                                              threads=threads)
    with timer("model_grid"):
        grid_files = _to_model_grid(native, work, prep)
    images = {**grid_files["images"],
              **_cascade_inputs(cascades or {}, grid_files, work, timer)}
    with timer("synthesize"):
        synthesis = synthesize_subject(generator, images, grid_files["mask"],
                                       grid_files["sidecar"], work / "synthetic_space-model.nii.gz",
                                       work / "synthetic_space-model.json")
    with timer("to_native"):
        grid_img = load_nifti(synthesis["output"])
        prediction = to_native_grid(grid_img, load_nifti(grid_files["mask"]), t1_img,
                                    load_nifti(native_mask))
    return {"prediction": prediction, "model_grid_image": grid_img, "synthesis": synthesis,
            "mask_info": mask_info}


def _to_model_grid(native: Mapping[str, Path], work: Path, prep: Preprocessing
                   ) -> dict[str, Any]:
    """Resample and normalise the native-grid inputs and the T1 brain mask onto the model grid."""
    images = {m: work / f"{m}_space-model_desc-norm.nii.gz" for m in native}
    mask = work / "space-model_desc-brain_mask.nii.gz"
    sidecar = work / "space-model_desc-brain_mask.json"
    prepare_subject(dict(native), work / "T1w_desc-brain_mask.nii.gz", images, mask,
                    prep.model_grid, prep.normalise, sidecar_path=sidecar)
    return {"images": images, "mask": mask, "sidecar": sidecar}


def _cascade_inputs(cascades: Mapping[str, Generator], grid_files: Mapping[str, Any],
                    work: Path, timer: _StepTimer) -> dict[str, Path]:
    """Synthesize each lacking input from the normalised model-grid T1 with its cascade model.

    The same brain mask and foreground slices as the CE-T1 synthesis are used, and the output
    is finished as a cascade model's output is in evaluation (in [0, 1], 0 outside the brain).

    Args:
        cascades: cascade models by target.
        grid_files: :func:`_to_model_grid`'s files (images, mask and its sidecar).
        work: where the synthetic inputs are written (marked synthetic).
        timer: records ``cascade_<target>``.

    Returns:
        Target -> the synthetic model-grid input.
    """
    if not cascades:
        return {}
    mask_img = load_model_grid_image(grid_files["mask"])
    brain = np.asarray(mask_img.dataobj) > 0
    first, last = read_foreground_slices(grid_files["sidecar"], n_slices=mask_img.shape[2])
    t1 = load_on_mask_grid(grid_files["images"]["T1w"], mask_img)
    made = {}
    for target, cascade in cascades.items():
        with timer(f"cascade_{target}"):
            volume = synthesize(cascade, {"T1w": t1}, brain, first, last)
            made[target] = save_nifti(volume, mask_img.affine,
                                      work / f"{target}_space-model_desc-cascade.nii.gz",
                                      synthetic=True)
    return made


def to_native_grid(prediction: nib.Nifti1Image, model_mask: nib.Nifti1Image,
                   reference: nib.Nifti1Image, native_mask: nib.Nifti1Image) -> np.ndarray:
    """Resample a model-grid prediction onto a native grid, inside the native brain mask.

    Linear interpolation weighted by the model-grid brain mask: a native voxel takes the
    interpolated prediction divided by the interpolated mask, i.e. the linear average of the
    brain voxels around it, so the zeros outside the model-grid brain do not darken its edge.

    Args:
        prediction: the model-grid prediction (0 outside the model-grid brain mask).
        model_mask: the model-grid brain mask.
        reference: an image on the native grid (its shape and affine are used).
        native_mask: the brain mask on the native grid.

    Returns:
        float32 array of the native grid's shape, in [0, 1], exactly 0 outside ``native_mask``.
    """
    target = (reference.shape[:3], reference.affine)
    value = _resample_linear(prediction, target)
    weight = _resample_linear(model_mask, target)
    out = np.zeros(value.shape, dtype=np.float32)
    np.divide(value, weight, out=out, where=weight > _MIN_MASK_WEIGHT)
    np.clip(out, 0.0, 1.0, out=out)
    out *= np.asarray(native_mask.dataobj).reshape(out.shape) > 0
    return out + 0.0


def _resample_linear(img: nib.Nifti1Image, target: tuple[tuple[int, ...], np.ndarray]
                     ) -> np.ndarray:
    data = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    resampled = resample_from_to(data, target, order=1, mode="constant", cval=0.0)
    return np.asarray(resampled.dataobj, dtype=np.float32)


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
                registered: Sequence[str], filled: Mapping[str, Any]) -> dict[str, Any]:
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
            "Registration": "ANTs rigid then affine, Mattes mutual information, seeded",
            "ADC": _adc_label(scans),
            "BrainMaskMethod": mask_info["method"],
            "ModelGrid": list(prep.model_grid),
            "Normalisation": prep.normalise,
            "ModelGridForegroundSlices": inference_sidecar.get("ForegroundSlices"),
            "BackToNative": "linear, weighted by the model-grid brain mask; 0 outside the "
                            "T1 brain mask",
        },
    })
    return record


def _model_label(model: PathLike) -> str:
    text = os.fspath(model)
    return text if _is_mlflow_uri(text) else Path(text).name


def _is_mlflow_uri(model: PathLike) -> bool:
    return os.fspath(model).startswith(("runs:/", "models:/"))


def _adc_label(scans: Scans) -> str | None:
    if scans.dwi is not None:
        return "fitted from the DWI (b = 0, 500, 1000 s/mm2), carried by its b0 registration"
    return "given map, registered to the T1" if scans.adc is not None else None


def _write_outputs(targets: Mapping[str, Path], prediction: np.ndarray, affine: np.ndarray,
                   record: Mapping[str, Any], model_grid_img: nib.Nifti1Image | None) -> None:
    """Write every output (each atomically); remove those written if a later one fails."""
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
    written: list[Path] = []
    try:
        for path, write in writers:
            write(path)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def _work_folder(work_dir: PathLike | None) -> Iterator[Path]:
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="cesynth-predict-") as tmp:
        yield Path(tmp)


class _StepTimer:
    """Wall-clock seconds per named step."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._steps: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._steps[step] = round(time.perf_counter() - start, 3)
            _log.info("%s: %.1f s", step, self._steps[step])

    def seconds(self) -> dict[str, float]:
        return {**self._steps, "total": round(time.perf_counter() - self._started, 3)}


__all__ = ["Preprocessing", "SPACE", "Scans", "check_cascade_files", "check_scans",
           "predict_patient",
           "resolve_preprocessing", "sidecar_path", "to_native_grid"]
