"""Test training subjects and checkpoints (e.g. ones whose predictions exercise clipping)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cesynth.cache import INPUT_MODALITIES, cache_subject
from cesynth.data import ValidationVolumes
from cesynth.inference import predict_volume
from cesynth.io import read_json, save_nifti, write_json
from cesynth.models import model_from_settings
from cesynth.normalise import normalise
from cesynth.settings import TrainSettings
from cesynth.train import train

TINY_GRID = (32, 40, 32)
SMALL_GRID = (16, 16, 6)
SMALL_FOREGROUND = (1, 5)


def cached_training_subject(root: Path, rng: np.random.Generator,
                            modalities: tuple[str, ...] = INPUT_MODALITIES) -> Path:
    """One model-grid subject on :data:`TINY_GRID`, histogram-equalised in its mask as the
    pipeline's are (a CE-T1 made from its T1 and T2), cached for training with ``modalities``
    as its input channels."""
    mask = np.zeros(TINY_GRID, dtype=np.uint8)
    mask[4:28, 5:35, 6:26] = 1
    volumes = {m: normalise(ndimage.gaussian_filter(rng.random(TINY_GRID), 2.0), mask)
               for m in modalities}
    volumes["ceT1w"] = np.clip(0.7 * volumes["T1w"] + 0.3 * volumes["T2w"], 0, 1) * mask
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    paths = {m: save_nifti(v, affine, root / f"sub-t_space-model_desc-norm_{m}.nii.gz")
             for m, v in volumes.items()}
    mask_path = save_nifti(mask, affine, root / "sub-t_space-model_desc-brain_mask.nii.gz",
                           dtype=np.uint8)
    sidecar = write_json({"foreground_slices": [6, 25]},
                         root / "sub-t_space-model_desc-brain_mask.json")
    return cache_subject(paths, mask_path, sidecar, root / "cache", modalities=modalities)


def stretch_output(checkpoint_path: Path, settings: TrainSettings, cache: Path) -> None:
    """Rescale the output layer so raw predictions in the brain span about -0.25..1.25.

    A model trained for a few steps predicts a narrow, often negative range, which clipping
    would turn into zeros; this makes both clipping bounds and real values show up in tests.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = model_from_settings(settings)
    model.load_state_dict(checkpoint["model"])
    volumes = ValidationVolumes([cache])[0]
    cached = read_json(cache)["modalities"]
    channels = [cached.index(m) for m in settings.modalities]  # e.g. the T1 alone
    raw = predict_volume(model.eval(), torch.from_numpy(volumes.inputs[channels]))[0].numpy()
    low, high = np.percentile(raw[volumes.mask[0] > 0], [15, 85])
    scale = 1.0 / (high - low)  # output = (raw - low) * scale, the 1x1 output conv rescaled
    state = checkpoint["model"]
    state["output_conv.weight"] = state["output_conv.weight"] * scale
    state["output_conv.bias"] = (state["output_conv.bias"] - low) * scale
    torch.save(checkpoint, checkpoint_path)


def trained_checkpoint(root: Path, settings: dict, preprocessing: dict) -> Path:
    """A tiny model trained briefly on one cached subject (no validation), its output layer
    stretched (:func:`stretch_output`), its checkpoint recording ``preprocessing``."""
    torch.set_num_threads(1)
    extra = tuple(m for m in settings.get("modalities", ()) if m not in INPUT_MODALITIES)
    cache = cached_training_subject(root, np.random.default_rng(0), INPUT_MODALITIES + extra)
    train_settings = TrainSettings.from_dict(settings)
    summary = train([cache], [], root / "run", train_settings, preprocessing=preprocessing)
    stretch_output(summary["checkpoint_best"], train_settings, cache)
    return Path(summary["checkpoint_best"])


def small_cached_subject(root: Path, name: str, rng: np.random.Generator) -> Path:
    """A :data:`SMALL_GRID` subject cached for training (seconds of CPU per run): smooth random
    T1/T2/ADC, a CE-T1 that depends on them plus an enhancing blob."""
    affine = np.eye(4)
    shape = SMALL_GRID
    t1, t2, adc = (np.clip(ndimage.gaussian_filter(rng.random(shape), 1.5) * 2 - 0.5, 0, 1)
                   for _ in range(3))
    blob = np.zeros(shape)
    blob[6:10, 6:10, 2:5] = 0.4
    ce = np.clip(0.7 * t1 + 0.2 * t2 + blob, 0, 1)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:14, 2:14, SMALL_FOREGROUND[0]:SMALL_FOREGROUND[1] + 1] = 1
    paths = {}
    for key, volume in {"T1w": t1, "T2w": t2, "adc": adc, "ceT1w": ce}.items():
        paths[key] = save_nifti(volume * mask, affine, root / f"{name}_{key}.nii.gz")
    mask_path = save_nifti(mask, affine, root / f"{name}_space-model_desc-brain_mask.nii.gz",
                           dtype=np.uint8)
    sidecar = write_json({"foreground_slices": list(SMALL_FOREGROUND)}, root / f"{name}_mask.json")
    return cache_subject(paths, mask_path, sidecar, root / "cache", subject=name)
