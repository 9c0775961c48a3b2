"""Metrics of one subject's synthetic CE-T1: MAE, PSNR and slice SSIM in a region, the record.

Images are compared on the model grid (RAS canonical, intensities in [0, 1], slices axial along
the last array axis, :data:`cesynth.normalise.SLICE_AXIS`). A region is a mask of the same shape
(non-zero = inside): the brain for Set A and Set B, the expert tumor mask for Set B.

Definitions (paper, "Evaluation Metric"; ``R`` is the region, ``|R|`` its voxel count):

* **MAE** ``= sum_R |pred - target| / |R|``.
* **PSNR** ``= 10 log10(MAX^2 / MSE)`` with ``MAX = 1`` (the data range of normalised images)
  and ``MSE = sum_R (pred - target)^2 / |R|``, the region's voxels only
  (:func:`psnr_in_mask`, also used by the trainer's validation). A perfect prediction has an
  unbounded PSNR: the metric dictionaries then hold ``None`` (JSON ``null``), so they stay valid
  JSON; :func:`flatten_metrics` turns it into ``inf`` for the numeric tables.
* **SSIM** (Wang et al. 2004): per axial slice, a full SSIM map over the whole slice with a
  Gaussian window (11 x 11, sigma 1.5), data range 1, ``K1 = 0.01``, ``K2 = 0.03``
  (``C1 = K1^2``, ``C2 = K2^2``); local means, variances and covariance are Gaussian-weighted
  (``sigma^2 = E[x^2] - E[x]^2``, as in ``pytorch_msssim``). At the slice border the window is cut
  to the part inside the slice and renormalised to weight 1 (normalised convolution), so the map
  has the slice's size and no padding value enters it; from 5 pixels in, it is the standard
  window, and the map's mean over that interior equals
  ``pytorch_msssim.ssim(..., data_range=1, size_average=False)`` of the slice. A slice's score is
  the mean of the map over the region's voxels in that slice; the SSIM of the volume is the mean
  of the scores of the slices that hold region voxels (each such slice counts once, whatever its
  region area). Intensities outside the region but within 5 pixels of it (in-plane) enter the
  local statistics of its border voxels.

One subject and model give one record (:func:`evaluate_subject` writes it as JSON), flattened by
:func:`flatten_metrics` to the per-subject table's row: :data:`ID_COLUMNS` and
:data:`METRIC_COLUMNS`, NaN where a region is absent. With the T1 and the model's enhancement
threshold the record also holds the endpoints of :mod:`cesynth.enhancement` (enhancement maps,
detection, lesions, BraSyn SSIM). The statistics over subjects and the evaluation stage's tables
are in :mod:`cesynth.evaluation_tables`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from cesynth.io import InputError, check_same_grid, load_nifti, write_json

SSIM_WINDOW = 11
"""Side of the Gaussian SSIM window (pixels)."""
SSIM_SIGMA = 1.5
"""Standard deviation of the Gaussian SSIM window (pixels)."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
"""SSIM stabilising constants; with data range 1, ``C1 = K1^2`` and ``C2 = K2^2``."""
DATA_RANGE = 1.0
"""MAX of PSNR and data range of SSIM: images are normalised to [0, 1]."""
SSIM_CHUNK_SLICES = 32
"""Slices per vectorised SSIM batch (about 0.2 GB of work arrays on the paper grid)."""

REGIONS = ("brain", "tumor")
METRICS = ("mae", "psnr", "ssim")
ID_COLUMNS = ("subject", "set", "model")
METRIC_COLUMNS = tuple(f"{region}_{metric}" for region in REGIONS for metric in METRICS)
"""Metric columns of the per-subject table: ``brain_mae`` ... ``tumor_ssim``."""

DEFAULT_SOURCES = {"pred": "prediction", "target": "target", "brain": "brain mask",
                   "tumor": "tumor mask"}


# ---------------------------------------------------------------- PSNR


def psnr_in_mask(pred: Any, target: Any, mask: Any) -> float:
    """PSNR with MAX = 1 and the MSE taken over the mask's voxels only (the paper's metric).

    Args:
        pred: predicted intensities in [0, 1] (numpy array or torch tensor).
        target: reference, same shape.
        mask: region (non-zero = inside), same shape.

    Returns:
        ``10 log10(1 / MSE)`` in dB (``inf`` for a perfect prediction).

    Raises:
        ValueError: shapes differ or the mask is empty.
    """
    pred_arr, target_arr, mask_arr = (_as_array(a) for a in (pred, target, mask))
    if not pred_arr.shape == target_arr.shape == mask_arr.shape:
        raise ValueError(f"shapes differ: {pred_arr.shape}, {target_arr.shape}, {mask_arr.shape}")
    inside = mask_arr != 0
    if not inside.any():
        raise ValueError("empty mask: PSNR is undefined")
    error = pred_arr[inside].astype(np.float64) - target_arr[inside].astype(np.float64)
    mse = float(np.mean(error**2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _as_array(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


# ---------------------------------------------------------------- SSIM


def _gaussian_window() -> np.ndarray:
    coords = np.arange(SSIM_WINDOW, dtype=np.float64) - SSIM_WINDOW // 2
    window = np.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    return window / window.sum()


def _blur(volume: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Gaussian blur within each axial slice (axes 0 and 1) with zero padding, same size out."""
    rows = ndimage.correlate1d(volume, window, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(rows, window, axis=1, mode="constant", cval=0.0)


def _ssim_slices(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM maps of the axial slices of float64 ``(x, y, n)`` volumes, normalised border window."""
    window = _gaussian_window()
    weight = _blur(np.ones(pred.shape[:2] + (1,)), window)  # window mass inside the slice

    def local_mean(volume: np.ndarray) -> np.ndarray:
        return _blur(volume, window) / weight

    mu_p, mu_t = local_mean(pred), local_mean(target)
    var_p = local_mean(pred * pred) - mu_p**2
    var_t = local_mean(target * target) - mu_t**2
    cov = local_mean(pred * target) - mu_p * mu_t
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    luminance = (2 * mu_p * mu_t + c1) / (mu_p**2 + mu_t**2 + c1)
    return luminance * (2 * cov + c2) / (var_p + var_t + c2)


def ssim_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Slice-wise SSIM map of two volumes (see the module docstring for the definition).

    All slices are filtered at once (in batches of :data:`SSIM_CHUNK_SLICES` to bound memory):
    separable Gaussian filters along the two in-plane axes, none along the slice axis.

    Args:
        pred: ``(x, y, z)`` volume, slices along the last axis, intensities in [0, 1].
        target: same shape.

    Returns:
        A float64 ``(x, y, z)`` array: the SSIM of each voxel within its axial slice.

    Raises:
        ValueError: the shapes differ or the volumes are not 3D.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"expected two 3D volumes of one shape, got {pred.shape}, {target.shape}")
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    out = np.empty(pred.shape, dtype=np.float64)
    for k in range(0, pred.shape[-1], SSIM_CHUNK_SLICES):
        chunk = np.s_[..., k:k + SSIM_CHUNK_SLICES]
        out[chunk] = _ssim_slices(pred[chunk], target[chunk])
    return out


def region_ssim(pred: np.ndarray, target: np.ndarray, region: np.ndarray) -> float:
    """Mean over the slices holding region voxels of the SSIM map's mean over those voxels.

    Args:
        pred: ``(x, y, z)`` volume in [0, 1].
        target: same shape.
        region: boolean mask, same shape, not empty.

    Returns:
        The region's slice-averaged SSIM.
    """
    occupied = np.flatnonzero(region.any(axis=(0, 1)))
    maps = ssim_map(pred[..., occupied], target[..., occupied])
    inside = region[..., occupied]
    per_slice = (maps * inside).sum(axis=(0, 1)) / inside.sum(axis=(0, 1))
    return float(per_slice.mean())


# ---------------------------------------------------------------- metrics of volumes


def region_metrics(pred: np.ndarray, target: np.ndarray, region: np.ndarray,
                   *, name: str = "region") -> dict[str, Any]:
    """MAE, PSNR and SSIM of a prediction in one region.

    Args:
        pred: predicted ``(x, y, z)`` volume, intensities in [0, 1].
        target: reference volume, same shape.
        region: mask of the region, same shape (non-zero = inside).
        name: names the region in error messages.

    Returns:
        ``mae``, ``psnr`` (dB; ``None`` when the prediction is exact in the region), ``ssim``
        and ``voxels`` (the region's voxel count).

    Raises:
        InputError: the shapes differ, the volumes are not 3D, or the region is empty.
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    inside = np.asarray(region) != 0
    if not pred.shape == target.shape == inside.shape:
        raise InputError(name, f"shapes differ: prediction {pred.shape}, target {target.shape}, "
                               f"region {inside.shape}")
    if pred.ndim != 3:
        raise InputError(name, f"expected 3D volumes, got shape {pred.shape}")
    voxels = int(inside.sum())
    if voxels == 0:
        raise InputError(name, "region is empty: no voxels to evaluate")
    psnr = psnr_in_mask(pred, target, inside)
    return {"mae": float(np.abs(pred[inside] - target[inside]).mean()),
            "psnr": None if math.isinf(psnr) else psnr,
            "ssim": region_ssim(pred, target, inside),
            "voxels": voxels}


def evaluate_volumes(pred: np.ndarray, target: np.ndarray, brain_mask: np.ndarray,
                     tumor_mask: np.ndarray | None = None, *,
                     sources: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of a prediction in the brain and, when a tumor mask is given, in the tumor.

    Args:
        pred: predicted ``(x, y, z)`` volume, intensities in [0, 1].
        target: reference volume, same shape.
        brain_mask: brain region, same shape (non-zero = inside).
        tumor_mask: optional tumor region, same shape.
        sources: names of ``pred``, ``target``, ``brain`` and ``tumor`` for error messages
            (file paths, for instance); defaults to descriptive words.

    Returns:
        ``{"brain": {...}, "tumor": {...}}`` (``tumor`` only with a tumor mask), each as
        returned by :func:`region_metrics`.

    Raises:
        InputError: shapes differ, values are not finite, or a region is empty.
    """
    who = {**DEFAULT_SOURCES, **(sources or {})}
    volumes = {"pred": np.asarray(pred), "target": np.asarray(target),
               "brain": np.asarray(brain_mask)}
    if tumor_mask is not None:
        volumes["tumor"] = np.asarray(tumor_mask)
    for key, volume in volumes.items():
        if volume.shape != volumes["pred"].shape:
            raise InputError(who[key], f"shape {volume.shape} differs from the prediction's "
                                       f"shape {volumes['pred'].shape}")
    for key in ("pred", "target"):
        bad = int(np.count_nonzero(~np.isfinite(volumes[key])))
        if bad:
            raise InputError(who[key], f"{bad} non-finite voxel values")
    return {region: region_metrics(volumes["pred"], volumes["target"], volumes[region],
                                   name=who[region])
            for region in REGIONS if region in volumes}


def evaluate_files(pred_path: str | os.PathLike, target_path: str | os.PathLike,
                   mask_path: str | os.PathLike,
                   tumor_mask_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of a synthetic CE-T1 NIfTI against the real one, on a shared grid.

    Args:
        pred_path: the synthetic CE-T1 (model grid, normalised).
        target_path: the real CE-T1, same grid.
        mask_path: the brain mask, same grid.
        tumor_mask_path: optional tumor mask, same grid.

    Returns:
        The :func:`evaluate_volumes` result plus ``files``: the base names (no folders, which may
        carry patient identifiers) of the inputs under ``pred``, ``target``, ``mask`` and
        ``tumor_mask``.

    Raises:
        InputError: a file is missing or unreadable, not 3D, on another grid (shape or affine
            differing by more than :data:`cesynth.io.GRID_ATOL_MM`) than the prediction, or a
            region is empty.
    """
    paths = {"pred": pred_path, "target": target_path, "brain": mask_path}
    if tumor_mask_path is not None:
        paths["tumor"] = tumor_mask_path
    images = {key: load_nifti(path) for key, path in paths.items()}
    for key in paths:  # "pred" first: its own 3D check comes before any comparison
        if len(_shape3(images[key])) != 3:
            raise InputError(paths[key], f"expected a 3D image, got shape {images[key].shape}")
        check_same_grid(images[key], images["pred"], paths[key],
                        f"the {Path(paths['pred']).name}")
    arrays = {key: _volume(img) for key, img in images.items()}
    result: dict[str, Any] = evaluate_volumes(
        arrays["pred"], arrays["target"], arrays["brain"], arrays.get("tumor"),
        sources={key: str(path) for key, path in paths.items()})
    names = {"pred": "pred", "target": "target", "brain": "mask", "tumor": "tumor_mask"}
    result["files"] = {names[key]: Path(path).name for key, path in paths.items()}
    return result


def _shape3(img: nib.Nifti1Image) -> tuple[int, ...]:
    """Image shape without a trailing singleton 4th dimension."""
    shape = tuple(int(n) for n in img.shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def _volume(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.get_fdata(dtype=np.float32)).reshape(_shape3(img))


# ---------------------------------------------------------------- the subject's record


def flatten_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Turn an :func:`evaluate_volumes` result into the per-subject table's metric columns.

    Args:
        result: ``{"brain": {...}, "tumor": {...}}``; extra keys (``files``) are ignored.

    Returns:
        ``{"brain_mae": ..., ..., "tumor_ssim": ...}`` with every :data:`METRIC_COLUMNS` key:
        NaN for an absent region, ``inf`` for an unbounded (``None``) PSNR.
    """
    flat: dict[str, float] = {}
    for region in REGIONS:
        values = result.get(region) or {}
        for metric in METRICS:
            value = values.get(metric, math.nan)
            flat[f"{region}_{metric}"] = math.inf if value is None else float(value)
    return flat


def evaluate_subject(pred_path: str | os.PathLike, target_path: str | os.PathLike,
                     mask_path: str | os.PathLike, out_path: str | os.PathLike, *,
                     subject: str, set_name: str, model: str,
                     tumor_mask_path: str | os.PathLike | None = None,
                     t1_path: str | os.PathLike | None = None,
                     threshold_path: str | os.PathLike | None = None,
                     classes_path: str | os.PathLike | None = None,
                     instances_path: str | os.PathLike | None = None,
                     lesion_sidecar_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score one synthetic image and write the subject's metrics JSON.

    A tumor mask that is empty on the model grid (a lesion smaller than a model voxel) gives no
    tumor metrics and a note, rather than failing the subject. With the T1 and the model's
    enhancement threshold, the record also holds the enhancement endpoints, and with a tumor
    mask the BraSyn SSIM (:func:`cesynth.enhancement.score_files`).

    Args:
        pred_path: the synthetic image on the model grid.
        target_path: the normalised real CE-T1 on the model grid.
        mask_path: the model-grid brain mask.
        out_path: the JSON to write.
        subject: subject label (pseudonymous BIDS label).
        set_name: ``A`` or ``B``.
        model: the model (experiment) name.
        tumor_mask_path: the model-grid tumor mask (Set B).
        t1_path: the normalised model-grid T1 (for the enhancement maps).
        threshold_path: the model's enhancement threshold JSON (chosen on validation).
        classes_path, instances_path, lesion_sidecar_path: the subject's enhancement truth on
            the model grid (:func:`cesynth.lesion_truth.lesion_truth_to_model_grid`), when it
            has one (the phantom's agent map, or a real cohort's expert lesion labels).

    Returns:
        What was written: ``subject``, ``set``, ``model``, ``brain``, optionally ``tumor``,
        ``enhancement`` and ``brasyn``, ``files`` and ``notes``.
    """
    from cesynth.enhancement import score_files

    notes = []
    if tumor_mask_path is not None and not np.any(np.asarray(load_nifti(tumor_mask_path).dataobj)):
        notes.append(f"{Path(tumor_mask_path).name} is empty on the model grid: no tumor metrics")
        tumor_mask_path = None
    result = evaluate_files(pred_path, target_path, mask_path, tumor_mask_path)
    endpoints = score_files(pred_path, target_path, mask_path, t1_path=t1_path,
                            threshold_path=threshold_path, tumor_mask_path=tumor_mask_path,
                            classes_path=classes_path, instances_path=instances_path,
                            lesion_sidecar_path=lesion_sidecar_path)
    notes += endpoints.pop("notes")
    record = {"subject": subject, "set": set_name, "model": model, **result, **endpoints,
              "notes": notes}
    write_json(record, out_path)
    return record


__all__ = [
    "DATA_RANGE", "ID_COLUMNS", "METRICS", "METRIC_COLUMNS", "REGIONS",
    "evaluate_files", "evaluate_subject", "evaluate_volumes", "flatten_metrics",
    "psnr_in_mask", "region_metrics", "region_ssim", "ssim_map",
]
