"""Apply a trained generator to one subject on the model grid.

This module knows nothing of Snakemake or of the results layout: it takes a checkpoint and
model-grid files (or arrays) and returns or writes the synthetic image. ``cesynth predict`` and
the MLflow-registry release build on it.

* :func:`load_generator` rebuilds the model a checkpoint of :mod:`cesynth.train` describes
  (:func:`cesynth.models.model_from_settings`) and loads its weights strictly. The checkpoint is
  read by :func:`cesynth.checkpoint.read_checkpoint_bytes` (``weights_only=True`` plus the numpy
  types of the saved RNG states), so a tampered file cannot run code; its SHA-256 is recorded
  for provenance.
* :func:`predict_volume` is the window inference that training's validation uses too: 3-slice
  windows (:func:`window_starts`, stride ``validation_stride``, the last window aligned to the
  last slice), overlapping predictions averaged.
* :func:`synthesize` predicts the foreground slices as validation does (:func:`predict_volume`),
  in float32 and without autocast. A modality the model takes but the subject lacks is filled
  with zeros (the paper's rule for missing inputs); the T1 (the model's first input) is
  required. The result is 0 outside the brain mask and outside the foreground slices, and
  clipped to [0, 1].
* :func:`synthesize_subject` adds the files: model-grid NIfTIs in, a NIfTI marked synthetic in
  its header (:func:`cesynth.io.save_nifti`) and a JSON sidecar out. Everything is computed
  before anything is written, and the sidecar names files by base name only (hospital paths can
  hold patient names).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cesynth import __version__
from cesynth.cache import (
    PATCH_SLICES,
    load_model_grid_image,
    load_on_mask_grid,
    read_foreground_slices,
)
from cesynth.checkpoint import read_checkpoint_bytes
from cesynth.distributed import DistContext, resolve_device
from cesynth.io import InputError, check_synthetic_paths, one_line_error, write_synthetic
from cesynth.models import model_from_settings
from cesynth.normalise import from_slice_major, to_slice_major
from cesynth.settings import TrainSettings

_log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
"""Accepted ``device`` names of :func:`load_generator`."""

_TARGET_NAMES = {"ceT1w": "contrast-enhanced (gadolinium) T1-weighted", "T2w": "T2-weighted",
                 "adc": "apparent diffusion coefficient (ADC)"}


# ---------------------------------------------------------------- the generator


@dataclass(frozen=True, eq=False)
class Generator:
    """A trained synthesis model, ready to predict.

    Args:
        model: the network, in eval mode, float32, on ``device``, gradients off.
        settings: the training settings stored in the checkpoint (inputs, target, strides).
        source: the checkpoint's file base name (never its directory).
        checkpoint_sha256: SHA-256 (hex) of the checkpoint file's bytes.
        device: where the model runs.
        preprocessing: how the training images were made (``model_grid``, ``normalise``,
            ``brainmask``), from the checkpoint; empty for checkpoints written before it was
            stored.
    """

    model: nn.Module
    settings: TrainSettings
    source: str
    checkpoint_sha256: str
    device: torch.device
    preprocessing: dict[str, Any] = field(default_factory=dict)


def load_generator(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a training checkpoint (``checkpoint_best.pt``) as a :class:`Generator`.

    The caller's torch RNG state is left untouched (the model is built under a forked RNG).

    Args:
        checkpoint_path: a checkpoint written by :mod:`cesynth.train`.
        device: ``cpu``, ``cuda``, ``auto`` (CUDA when available) or a ``torch.device``.

    Returns:
        The generator.

    Raises:
        InputError: the file is missing, unreadable or not a cesynth checkpoint, its weights do
            not fit the model its settings describe, or the device is unknown or unavailable.
    """
    path = Path(checkpoint_path)
    target_device = _resolve_device(device)
    checkpoint, data = read_checkpoint_bytes(path)
    settings = _checkpoint_settings(checkpoint, path)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten anyway
        model = model_from_settings(settings)
    _load_weights(model, checkpoint["model"], path)
    model = model.float().to(target_device).eval().requires_grad_(False)
    return Generator(model, settings, path.name, hashlib.sha256(data).hexdigest(), target_device,
                     _checkpoint_preprocessing(checkpoint, path))


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES:
        raise InputError("device", f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return resolve_device(device, DistContext())


def _checkpoint_settings(checkpoint: Mapping[str, Any], path: Path) -> TrainSettings:
    try:
        return TrainSettings.from_dict(checkpoint["settings"])
    except (TypeError, ValueError) as err:
        raise InputError(path, f"invalid settings in checkpoint ({one_line_error(err)})") from err


def _checkpoint_preprocessing(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    preprocessing = checkpoint.get("preprocessing") or {}
    if not isinstance(preprocessing, Mapping):
        raise InputError(path, f"invalid preprocessing in checkpoint (a "
                         f"{type(preprocessing).__name__}, not a mapping)")
    return dict(preprocessing)


def _load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise InputError(path, f"weights do not fit the model of its settings "
                         f"({one_line_error(err)})") from err



# ---------------------------------------------------------------- window inference


def window_starts(n_slices: int, window: int = PATCH_SLICES, stride: int = 1) -> list[int]:
    """First slices of the windows that cover ``n_slices`` (the last one ends on the last slice).

    Args:
        n_slices: slices of the volume (>= ``window``).
        window: slices per window.
        stride: step between windows.

    Returns:
        Sorted window starts.
    """
    if n_slices < window:
        raise ValueError(f"{n_slices} slices cannot hold a {window}-slice window")
    starts = list(range(0, n_slices - window + 1, stride))
    if starts[-1] != n_slices - window:
        starts.append(n_slices - window)
    return starts


@torch.no_grad()
def predict_volume(model: nn.Module, inputs: torch.Tensor, *, stride: int = 1,
                   batch_size: int = 3, window: int = PATCH_SLICES) -> torch.Tensor:
    """Predict a whole slice-major volume with a 3-slice model, averaging overlapping windows.

    Args:
        model: maps ``(N, C, window, Y, X)`` to ``(N, 1, window, Y, X)``; used as it is (call
            ``model.eval()`` first).
        inputs: ``(C, Z, Y, X)`` on the model's device.
        stride: slices between window starts (1: every slice is predicted up to 3 times).
        batch_size: windows per forward pass.
        window: slices per window.

    Returns:
        ``(1, Z, Y, X)`` float32 prediction on the inputs' device.
    """
    _, n_slices, height, width = inputs.shape
    total = torch.zeros((1, n_slices, height, width), dtype=torch.float32, device=inputs.device)
    counts = torch.zeros((1, n_slices, 1, 1), dtype=torch.float32, device=inputs.device)
    starts = window_starts(n_slices, window, stride)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        batch = torch.stack([inputs[:, s:s + window] for s in chunk])
        output = model(batch).float()
        for start, predicted in zip(chunk, output, strict=True):
            total[:, start:start + window] += predicted
            counts[:, start:start + window] += 1
    return total / counts


# ---------------------------------------------------------------- arrays


def synthesize(generator: Generator, inputs: Mapping[str, np.ndarray | None],
               brain_mask: np.ndarray, first: int, last: int,
               zeroed: Sequence[str] = ()) -> np.ndarray:
    """Predict the target of one subject from model-grid arrays.

    Args:
        generator: the loaded model.
        inputs: modality -> RAS model-grid ``(x, y, z)`` array, normalised as for training.
            A modality of ``generator.settings.modalities`` that is ``None`` or absent is filled
            with zeros; the first one (the T1) is required. Other keys are ignored.
        brain_mask: ``(x, y, z)`` brain mask (nonzero = brain).
        first: first foreground slice (z index, inclusive).
        last: last foreground slice (inclusive).
        zeroed: inputs zeroed on purpose; only then may the T1 be absent.

    Returns:
        float32 ``(x, y, z)`` prediction in [0, 1]; 0 outside the brain mask and outside
        slices ``first..last``.

    Raises:
        InputError: the T1 is missing, an input's shape differs from the mask's or holds
            non-finite values, the slice range is invalid, or the model cannot take the grid.
    """
    brain = np.asarray(brain_mask) > 0
    if brain.ndim != 3:
        raise InputError("brain mask", f"expected a 3D (x, y, z) array, got shape {brain.shape}")
    stacked = _input_stack(generator.settings.modalities, inputs, brain.shape, zeroed)
    n_slices = brain.shape[2]
    _check_slice_range(first, last, n_slices)
    _check_inplane(generator, brain.shape)
    start, stop = _prediction_window(first, last, n_slices)
    predicted = _predict(generator, stacked[:, start:stop + 1])
    out = np.zeros(stacked.shape[1:], dtype=np.float32)
    out[first:last + 1] = predicted[first - start:last - start + 1]
    return finish_prediction(np.ascontiguousarray(from_slice_major(out)), brain)


def finish_prediction(prediction: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """A raw prediction as evaluation and validation score it: in [0, 1], zero outside the brain.

    Args:
        prediction: the network's output, any shape.
        brain_mask: the brain, same shape (nonzero = brain).

    Returns:
        A float32 copy, clipped to [0, 1] and 0 outside the brain.
    """
    out = np.asarray(prediction, dtype=np.float32) * (np.asarray(brain_mask) != 0)
    np.clip(out, 0.0, 1.0, out=out)
    out += 0.0  # negative zeros (negative predictions times 0) become +0
    return out


def missing_modalities(generator: Generator, present: Sequence[str]) -> list[str]:
    """The model inputs not in ``present`` (zero-filled by :func:`synthesize`), in model order."""
    return [m for m in generator.settings.modalities if m not in present]


def _input_stack(modalities: Sequence[str], inputs: Mapping[str, np.ndarray | None],
                 shape: tuple[int, ...], zeroed: Sequence[str] = ()) -> np.ndarray:
    """The model's input channels as a contiguous float32 slice-major ``(C, z, y, x)`` array."""
    if inputs.get(modalities[0]) is None and modalities[0] not in zeroed:
        raise InputError(modalities[0], "required input is missing (the model's first input)")
    stacked = np.zeros((len(modalities), *shape[::-1]), dtype=np.float32)
    for channel, modality in enumerate(modalities):
        volume = inputs.get(modality)
        if volume is None:
            continue
        volume = np.asarray(volume, dtype=np.float32)
        if volume.shape != shape:
            raise InputError(modality, f"shape {volume.shape} differs from the brain mask's "
                             f"{shape}")
        if not np.isfinite(volume).all():
            raise InputError(modality, "holds non-finite values (NaN or infinity)")
        stacked[channel] = to_slice_major(volume)
    return stacked


def _check_slice_range(first: int, last: int, n_slices: int) -> None:
    if not 0 <= first <= last < n_slices:
        raise InputError("foreground slices", f"[{first}, {last}] outside 0..{n_slices - 1}")
    if n_slices < PATCH_SLICES:
        raise InputError("brain mask", f"{n_slices} slices; the model needs {PATCH_SLICES}")


def _check_inplane(generator: Generator, shape: tuple[int, ...]) -> None:
    multiple = getattr(generator.model, "inplane_multiple", 1)
    if shape[0] % multiple or shape[1] % multiple:
        raise InputError(generator.source, f"{generator.settings.model} needs in-plane sizes "
                         f"divisible by {multiple}; the grid is {shape[0]}x{shape[1]}")


def _prediction_window(first: int, last: int, n_slices: int) -> tuple[int, int]:
    """Slices to feed the model: ``first..last``, widened to one window if it is shorter."""
    start = min(first, n_slices - PATCH_SLICES)
    return start, max(last, start + PATCH_SLICES - 1)


def _predict(generator: Generator, stacked: np.ndarray) -> np.ndarray:
    """``(z, y, x)`` float32 prediction of ``(C, z, y, x)`` inputs."""
    settings = generator.settings
    tensor = torch.from_numpy(np.ascontiguousarray(stacked)).to(generator.device)
    with torch.no_grad():
        prediction = predict_volume(generator.model, tensor, stride=settings.validation_stride,
                                    batch_size=settings.batch_size)
    return prediction[0].float().cpu().numpy()


# ---------------------------------------------------------------- files


def synthesize_subject(
    generator: Generator,
    image_paths: Mapping[str, str | Path | None],
    mask_path: str | Path,
    mask_sidecar_path: str | Path,
    out_path: str | Path,
    sidecar_out_path: str | Path,
    zeroed: Sequence[str] = (),
) -> dict[str, Any]:
    """Synthesize one subject from its model-grid files and write the NIfTI and its sidecar.

    Args:
        generator: the loaded model.
        image_paths: modality -> normalised model-grid NIfTI (``*_space-model_desc-norm_*``);
            ``None`` or an absent key marks a missing input (zero-filled). Modalities the model
            does not take are ignored.
        mask_path: the model-grid brain mask (``*_space-model_desc-brain_mask.nii.gz``); its
            grid and affine are the output's.
        mask_sidecar_path: the mask's JSON sidecar with ``foreground_slices``.
        out_path: output NIfTI (``.nii`` or ``.nii.gz``), float32, marked synthetic.
        sidecar_out_path: output JSON sidecar (see :func:`provenance_sidecar`).
        zeroed: inputs replaced by zeros on purpose although they may exist (the paper's
            missing-input experiments, Fig. 10); the T1 may be one of them. The sidecar names
            them under ``ZeroedInputs``.

    Returns:
        ``input_modalities``, ``missing_modalities``, ``foreground_slices`` ``[first, last]``,
        ``slices_predicted``, ``seconds`` and the written ``output`` and ``sidecar`` paths.

    Raises:
        InputError: a missing T1, a missing or unreadable file, an image not on the mask's grid
            (shape, orientation or affine), an invalid slice range, or a bad output name.
            Nothing is written then.
    """
    started = time.perf_counter()
    check_synthetic_paths(out_path, sidecar_out_path)
    modalities = generator.settings.modalities
    image_paths = {m: p for m, p in image_paths.items() if m not in zeroed}
    if image_paths.get(modalities[0]) is None and modalities[0] not in zeroed:
        raise InputError(modalities[0], "required input image is missing")
    mask_img = load_model_grid_image(mask_path)
    grid = tuple(mask_img.shape[:3])
    brain = np.asarray(mask_img.dataobj) > 0
    first, last = read_foreground_slices(mask_sidecar_path, n_slices=grid[2])
    used = {m: Path(p) for m in modalities if (p := image_paths.get(m)) is not None}
    _log_ignored(image_paths, modalities)
    volumes = {m: load_on_mask_grid(p, mask_img) for m, p in used.items()}
    prediction = synthesize(generator, volumes, brain, first, last, zeroed=zeroed)
    sources = [*used.values(), Path(mask_path), Path(mask_sidecar_path)]
    sidecar = provenance_sidecar(generator, list(used), sources, (first, last))
    if zeroed:
        sidecar["ZeroedInputs"] = [m for m in modalities if m in zeroed]
    write_synthetic(prediction, mask_img.affine, sidecar, out_path, sidecar_out_path)
    return {"input_modalities": list(used), "missing_modalities": sidecar["MissingModalities"],
            "foreground_slices": [first, last], "slices_predicted": last - first + 1,
            "seconds": time.perf_counter() - started, "output": Path(out_path),
            "sidecar": Path(sidecar_out_path)}


def provenance_sidecar(generator: Generator, used: Sequence[str], sources: Sequence[str | Path],
                       foreground_slices: tuple[int, int]) -> dict[str, Any]:
    """The JSON sidecar of a synthetic image (BIDS-derivative style; file base names only).

    Args:
        generator: the model that produced the image.
        used: the input modalities given (the model's other inputs were zero-filled).
        sources: files the image was computed from; only their base names are kept.
        foreground_slices: the predicted slice range ``(first, last)``.

    Returns:
        ``Synthetic``, ``Description``, ``Modality``, ``InputModalities``,
        ``MissingModalities``, ``MissingModalityFill``, ``Model``, ``ModelInputs``,
        ``Checkpoint``, ``CheckpointSHA256``, ``CesynthVersion``, ``Sources``,
        ``ForegroundSlices``, ``SkullStripped`` and ``IntensityRange``.
    """
    settings = generator.settings
    target = _TARGET_NAMES.get(settings.target, settings.target)
    description = (f"Synthetic {target} image computed by cesynth (a neural network) from "
                   f"{', '.join(used)}. It was not acquired and no contrast agent was given; "
                   "not for diagnosis without review by a qualified reader.")
    return {
        "Synthetic": True,
        "Description": description,
        "Modality": settings.target,
        "InputModalities": list(used),
        "MissingModalities": missing_modalities(generator, used),
        "MissingModalityFill": "zeros",
        "Model": settings.model,
        "ModelInputs": list(settings.modalities),
        "Checkpoint": Path(generator.source).name,
        "CheckpointSHA256": generator.checkpoint_sha256,
        "CesynthVersion": __version__,
        "Sources": [Path(s).name for s in sources],
        "ForegroundSlices": [int(foreground_slices[0]), int(foreground_slices[1])],
        "SkullStripped": True,
        "IntensityRange": [0.0, 1.0],
    }


def _log_ignored(image_paths: Mapping[str, Any], modalities: Sequence[str]) -> None:
    ignored = sorted(m for m, p in image_paths.items() if p is not None and m not in modalities)
    if ignored:
        _log.info("inputs %s are not used by the model (inputs %s)", ignored, list(modalities))


__all__ = ["DEVICES", "Generator", "finish_prediction", "load_generator", "missing_modalities",
           "predict_volume",
           "provenance_sidecar", "synthesize", "synthesize_subject", "window_starts"]
