"""Evaluation of synthetic CE-T1 images: MAE, PSNR and slice SSIM in a region, and the tables.

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

Tables: one tidy row per subject and model (:data:`ID_COLUMNS` and :data:`METRIC_COLUMNS`, NaN
where a region is absent), summarised as mean and sample standard deviation per model
(:func:`summarise`, :func:`format_mean_sd`) and compared with paired t-tests
(:func:`paired_ttest`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, stats

from cesynth.io import InputError, atomic_path, load_nifti, read_json, write_json, write_tsv

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
GRID_ATOL = 1e-4
"""Largest difference of any affine entry between grids that are taken to be the same."""

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
            differing by more than :data:`GRID_ATOL`) than the prediction, or a region is empty.
    """
    paths = {"pred": pred_path, "target": target_path, "brain": mask_path}
    if tumor_mask_path is not None:
        paths["tumor"] = tumor_mask_path
    images = {key: load_nifti(path) for key, path in paths.items()}
    for key in paths:
        check_same_grid(images[key], paths[key], images["pred"], paths["pred"])
    arrays = {key: _volume(img) for key, img in images.items()}
    result: dict[str, Any] = evaluate_volumes(
        arrays["pred"], arrays["target"], arrays["brain"], arrays.get("tumor"),
        sources={key: str(path) for key, path in paths.items()})
    names = {"pred": "pred", "target": "target", "brain": "mask", "tumor": "tumor_mask"}
    result["files"] = {names[key]: Path(path).name for key, path in paths.items()}
    return result


def check_same_grid(img: nib.Nifti1Image, path: str | os.PathLike,
                    reference: nib.Nifti1Image, reference_path: str | os.PathLike) -> None:
    """Raise unless ``img`` is a 3D image on the reference's grid (shape and affine).

    Args:
        img: the image to check.
        path: its file, named in the error.
        reference: the image that defines the grid.
        reference_path: its file, named in the message.

    Raises:
        InputError: on ``path``, with both shapes.
    """
    shape, ref_shape = _shape3(img), _shape3(reference)
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D image, got shape {img.shape}")
    if shape != ref_shape:
        raise InputError(path, f"grid shape {shape} differs from {Path(reference_path).name}'s "
                               f"shape {ref_shape}")
    offset = float(np.max(np.abs(img.affine - reference.affine)))
    if offset > GRID_ATOL:
        raise InputError(path, f"affine differs from {Path(reference_path).name}'s by up to "
                               f"{offset:.4g} (both shape {shape})")


def _shape3(img: nib.Nifti1Image) -> tuple[int, ...]:
    """Image shape without a trailing singleton 4th dimension."""
    shape = tuple(int(n) for n in img.shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def _volume(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.get_fdata(dtype=np.float32)).reshape(_shape3(img))


# ---------------------------------------------------------------- tables


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


def summarise(per_subject: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Mean and sample standard deviation (``ddof = 1``) of every metric column per group.

    Args:
        per_subject: tidy table, one row per subject and model, with the ``by`` columns and
            any of :data:`METRIC_COLUMNS` (NaN values are skipped).
        by: grouping columns; groups keep their order of first appearance.

    Returns:
        One row per group: the ``by`` columns, ``n`` (rows in the group) and
        ``<metric>_mean``, ``<metric>_sd`` for each metric column present.

    Raises:
        InputError: a ``by`` column is missing or no metric column is present.
    """
    by = list(by)
    missing = [column for column in by if column not in per_subject.columns]
    metrics = [column for column in METRIC_COLUMNS if column in per_subject.columns]
    if missing or not metrics:
        raise InputError("per-subject table", f"missing grouping columns {missing} or metric "
                                              f"columns (have {list(per_subject.columns)})")
    groups = per_subject.groupby(by, sort=False, dropna=False)
    table = groups.size().rename("n").to_frame()
    for column in metrics:
        values = groups[column]
        table[f"{column}_mean"] = values.mean()
        table[f"{column}_sd"] = values.std(ddof=1)
    return table.reset_index()


def format_mean_sd(mean: float, sd: float, digits: int) -> str:
    """Format ``mean ± sd`` as the paper's tables do, e.g. ``28.24±1.26``.

    Args:
        mean: the mean.
        sd: the standard deviation; NaN (a single subject) gives the mean alone.
        digits: decimals of both numbers.

    Returns:
        The text; ``n/a`` for a NaN mean.
    """
    if math.isnan(mean):
        return "n/a"
    if math.isnan(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}±{sd:.{digits}f}"


def paired_ttest(per_subject: pd.DataFrame, metric: str, model_a: str,
                 model_b: str) -> dict[str, float | int]:
    """Paired t-test of one metric between two models over the subjects both were evaluated on.

    Args:
        per_subject: tidy table with ``subject``, ``model`` and the ``metric`` column.
        metric: the metric column, e.g. ``brain_psnr``.
        model_a: first model; differences are ``a - b``.
        model_b: second model.

    Returns:
        ``t``, ``p`` (two-sided, :func:`scipy.stats.ttest_rel`), ``n`` (pairs) and
        ``mean_difference`` (mean of ``a - b``).

    Raises:
        InputError: missing columns, a subject listed twice for one model, or fewer than 2
            subjects with the metric for both models.
    """
    who = f"{metric} {model_a} vs {model_b}"
    if not {"subject", "model", metric} <= set(per_subject.columns):
        raise InputError(who, "per-subject table needs columns subject, model and the metric")
    pairs = pd.concat([_model_metric(per_subject, metric, model, who)
                       for model in (model_a, model_b)], axis=1, join="inner").dropna()
    if len(pairs) < 2:
        raise InputError(who, f"{len(pairs)} subject(s) with the metric for both models; "
                              "a paired t-test needs at least 2")
    a, b = pairs.iloc[:, 0].to_numpy(float), pairs.iloc[:, 1].to_numpy(float)
    result = stats.ttest_rel(a, b)
    return {"t": float(result.statistic), "p": float(result.pvalue), "n": len(pairs),
            "mean_difference": float(np.mean(a - b))}


def _model_metric(per_subject: pd.DataFrame, metric: str, model: str, who: str) -> pd.Series:
    """The metric of one model indexed by subject (sorted)."""
    rows = per_subject[per_subject["model"] == model]
    twice = rows["subject"][rows["subject"].duplicated()].unique().tolist()
    if twice:
        raise InputError(who, f"subjects listed more than once for model {model}: {twice}")
    return rows.set_index("subject")[metric].rename(model).sort_index()


# ---------------------------------------------------------------- the evaluation stage

PAPER_REFERENCE = {("A", "brain_psnr"): 28.24, ("A", "brain_ssim"): 0.923,
                   ("B", "brain_psnr"): 27.62, ("B", "brain_ssim"): 0.909,
                   ("B", "tumor_psnr"): 21.2}
"""The paper's 3D HR-FCN on its (non-public) UCLA data: Tables I and II."""

TABLE_COLUMNS = {
    "A": (("brain_mae", "Brain MAE", 3), ("brain_psnr", "Brain PSNR (dB)", 2),
          ("brain_ssim", "Brain SSIM", 3)),
    "B": (("brain_psnr", "Brain PSNR (dB)", 2), ("tumor_psnr", "Tumor PSNR (dB)", 2),
          ("brain_ssim", "Brain SSIM", 3), ("tumor_ssim", "Tumor SSIM", 3),
          ("tumor_mae", "Tumor MAE", 3)),
}
"""Columns of the paper-style tables per set: (metric column, heading, decimals)."""


def evaluate_subject(pred_path: str | os.PathLike, target_path: str | os.PathLike,
                     mask_path: str | os.PathLike, out_path: str | os.PathLike, *,
                     subject: str, set_name: str, model: str,
                     tumor_mask_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score one synthetic image and write the subject's metrics JSON.

    A tumor mask that is empty on the model grid (a lesion smaller than a model voxel) gives no
    tumor metrics and a note, rather than failing the subject.

    Args:
        pred_path: the synthetic image on the model grid.
        target_path: the normalised real CE-T1 on the model grid.
        mask_path: the model-grid brain mask.
        out_path: the JSON to write.
        subject: subject label (pseudonymous BIDS label).
        set_name: ``A`` or ``B``.
        model: the model (experiment) name.
        tumor_mask_path: the model-grid tumor mask (Set B).

    Returns:
        What was written: ``subject``, ``set``, ``model``, ``brain``, optionally ``tumor``,
        ``files`` and ``notes``.
    """
    notes = []
    if tumor_mask_path is not None and not np.any(np.asarray(load_nifti(tumor_mask_path).dataobj)):
        notes.append(f"{Path(tumor_mask_path).name} is empty on the model grid: no tumor metrics")
        tumor_mask_path = None
    result = evaluate_files(pred_path, target_path, mask_path, tumor_mask_path)
    record = {"subject": subject, "set": set_name, "model": model, **result, "notes": notes}
    write_json(record, out_path)
    return record


def read_subject_metrics(json_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The per-subject table (:data:`ID_COLUMNS` + :data:`METRIC_COLUMNS`) from metrics JSONs."""
    rows = []
    for path in json_paths:
        record = read_json(path)
        rows.append({key: record[key] for key in ID_COLUMNS} | flatten_metrics(record))
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, *METRIC_COLUMNS])


def pairwise_ttests(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Paired t-tests between every two models, per set and metric, where 2+ pairs exist.

    Returns:
        Columns ``set``, ``metric``, ``model_a``, ``model_b``, ``n``, ``mean_difference``, ``t``
        and ``p`` (empty with one model).
    """
    rows = []
    for set_name, rows_of_set in per_subject.groupby("set", sort=True):
        models = list(dict.fromkeys(rows_of_set["model"]))
        for metric in METRIC_COLUMNS:
            for i, model_a in enumerate(models):
                for model_b in models[i + 1:]:
                    try:
                        test = paired_ttest(rows_of_set, metric, model_a, model_b)
                    except InputError:
                        continue  # fewer than 2 pairs (e.g. no tumor masks in Set A)
                    rows.append({"set": set_name, "metric": metric, "model_a": model_a,
                                 "model_b": model_b, **test})
    columns = ["set", "metric", "model_a", "model_b", "n", "mean_difference", "t", "p"]
    return pd.DataFrame(rows, columns=columns)


def paper_tables(summary: pd.DataFrame) -> str:
    """Markdown tables in the layout of the paper's Tables I (Set A) and II (Set B).

    Args:
        summary: :func:`summarise` output grouped by ``("set", "model")``.

    Returns:
        The Markdown text, with the paper's reported values for comparison.
    """
    parts = []
    for set_name, columns in TABLE_COLUMNS.items():
        rows = summary[summary["set"] == set_name]
        if rows.empty:
            continue
        region = "brain" if set_name == "A" else "brain and tumor"
        parts.append(f"## Set {set_name}: {region} (mean±sd over subjects)\n")
        parts.append("| model | n | " + " | ".join(c[1] for c in columns) + " |")
        parts.append("|---|---|" + "---|" * len(columns))
        for row in rows.itertuples(index=False):
            cells = [format_mean_sd(getattr(row, f"{c}_mean"), getattr(row, f"{c}_sd"), d)
                     for c, _, d in columns]
            parts.append(f"| {row.model} | {row.n} | " + " | ".join(cells) + " |")
        paper = [str(PAPER_REFERENCE.get((set_name, c), "")) for c, _, _ in columns]
        parts.append("| paper, 3D HR-FCN (UCLA data) | | " + " | ".join(paper) + " |\n")
    return "\n".join(parts)


def experiment_scores(summary_path: str | os.PathLike, model: str) -> dict[str, float]:
    """One model's mean scores per set from ``summary.tsv``, as flat metric names.

    Args:
        summary_path: the table :func:`tabulate_evaluation` writes.
        model: the model (experiment) name.

    Returns:
        ``{"setA_brain_psnr_mean": ..., "setB_tumor_psnr_mean": ...}``; absent values left out.
    """
    summary = pd.read_csv(summary_path, sep="\t", na_values=["n/a"], dtype={"model": str})
    scores = {}
    for row in summary[summary["model"] == model].to_dict("records"):
        for column in METRIC_COLUMNS:
            value = row.get(f"{column}_mean")
            if value is not None and math.isfinite(float(value)):
                scores[f"set{row['set']}_{column}_mean"] = float(value)
    return scores


def tabulate_evaluation(json_paths: Sequence[str | os.PathLike],
                        out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the evaluation tables from the per-subject metrics JSONs.

    Args:
        json_paths: files written by :func:`evaluate_subject`.
        out_dir: the evaluation folder.

    Returns:
        Paths by name: ``metrics`` (one row per subject and model), ``summary`` (mean and sd
        per set and model), ``ttests`` (paired t-tests between models) and ``tables``
        (Markdown, the paper's layout).
    """
    out = Path(out_dir)
    per_subject = read_subject_metrics(json_paths)
    summary = summarise(per_subject, by=("set", "model"))
    paths = {"metrics": out / "metrics.tsv", "summary": out / "summary.tsv",
             "ttests": out / "ttests.tsv", "tables": out / "tables.md"}
    write_tsv(per_subject, paths["metrics"])
    write_tsv(summary, paths["summary"])
    write_tsv(pairwise_ttests(per_subject), paths["ttests"])
    with atomic_path(paths["tables"]) as tmp:
        tmp.write_text("# Synthetic CE-T1 against the real CE-T1\n\n" + paper_tables(summary))
    return paths


__all__ = [
    "DATA_RANGE", "ID_COLUMNS", "METRICS", "METRIC_COLUMNS", "PAPER_REFERENCE", "REGIONS",
    "check_same_grid", "evaluate_files", "evaluate_subject", "evaluate_volumes",
    "experiment_scores", "flatten_metrics",
    "format_mean_sd", "paired_ttest", "pairwise_ttests", "paper_tables", "psnr_in_mask",
    "read_subject_metrics", "region_metrics", "region_ssim", "ssim_map", "summarise",
    "tabulate_evaluation",
]
