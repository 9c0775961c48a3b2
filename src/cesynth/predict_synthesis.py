"""From a new patient's inputs on the T1 grid to the synthetic CE-T1 on it, for ``cesynth predict``.

Loads the CE-T1 model (a checkpoint or an MLflow URI) and the cascade models for the inputs the
patient lacks (T1 -> T2, T1 -> ADC; :func:`cesynth.release.resolve_cascade`), each checked
against the CE-T1 model's model grid and normalisation. Then: the T1's brain mask, the model grid
and normalisation (:func:`cesynth.normalise.prepare_subject`), the cascade fill-in of lacking
inputs, the synthesis (:func:`cesynth.inference.synthesize_subject`) and the way back to the
native T1 grid (:func:`to_native_grid`). Files go to the work folder only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from cesynth import brainmask
from cesynth.cache import load_model_grid_image, load_on_mask_grid, read_foreground_slices
from cesynth.inference import Generator, load_generator, synthesize, synthesize_subject
from cesynth.io import InputError, load_nifti, save_nifti
from cesynth.normalise import prepare_subject
from cesynth.predict_inputs import PathLike, Preprocessing, StepTimer
from cesynth.release import CASCADE_DIR, check_cascade, resolve_cascade, resolve_model

_MIN_MASK_WEIGHT = 1e-3  # below this share of model-grid brain, a native voxel gets no value


# ---------------------------------------------------------------- models


def load_model(model: PathLike, download_dir: Path, device: str) -> Generator:
    """Load the model a path or MLflow URI names; errors on a download name the URI."""
    path = resolve_model(model, download_dir)
    try:
        return load_generator(path, device)
    except InputError as err:
        if err.who != str(path) or path == Path(os.fspath(model)):
            raise
        raise InputError(os.fspath(model), err.problem) from err


def load_cascades(model: PathLike, lacking: Sequence[str], explicit: Mapping[str, Path],
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
               if target not in explicit and is_mlflow_uri(model) else str(found[target]))
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


def is_mlflow_uri(model: PathLike) -> bool:
    """Whether the model reference is an MLflow ``runs:/`` or ``models:/`` URI."""
    return os.fspath(model).startswith(("runs:/", "models:/"))


# ---------------------------------------------------------------- synthesis


def synthesize_on_t1_grid(generator: Generator, prep: Preprocessing,
                          native: Mapping[str, Path], t1_img: nib.Nifti1Image, work: Path,
                          timer: StepTimer, *, threads: int,
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
                                              threads=threads, reference="T1w")
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
                    prep.model_grid, prep.normalise, sidecar_path=sidecar,
                    **prep.normalise_options)
    return {"images": images, "mask": mask, "sidecar": sidecar}


def _cascade_inputs(cascades: Mapping[str, Generator], grid_files: Mapping[str, Any],
                    work: Path, timer: StepTimer) -> dict[str, Path]:
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


__all__ = ["is_mlflow_uri", "load_cascades", "load_model", "synthesize_on_t1_grid",
           "to_native_grid"]
