"""Endpoints a reader needs: enhancement maps, voxel-wise detection, lesions, BraSyn SSIM.

Images are the normalised model-grid volumes :mod:`cesynth.evaluate` scores (intensities in
[0, 1], zero outside the brain). Definitions (every voxel count is inside the brain mask):

* **Enhancement maps**: the true ``E = CE-T1 - T1`` and the synthetic ``E' = synthetic CE-T1 -
  T1``; their Pearson correlation and MAE in the brain and, with a tumor mask, in the tumor
  (:func:`enhancement_agreement`).
* **Enhancing truth** ``M = [E > delta]`` with the paper's ``delta`` (``train.delta``, the same
  for every model). **Voxel-wise detection**: ROC AUC of ``E'`` against ``M`` by the
  Mann-Whitney rank formula (ties count one half, so a constant ``E'`` gives 0.5,
  :func:`roc_auc`); sensitivity, specificity and the Dice of ``[E' > t]`` against ``M`` at a
  threshold ``t`` chosen on the Set A validation subjects only (:func:`choose_threshold`: the
  ``t`` maximising Youden's ``J = sensitivity + specificity - 1`` over their pooled brain
  voxels). Without validation subjects (or without both enhancing and non-enhancing voxels in
  them) ``t = delta``, fixed a priori, and the threshold record says so.
* **Lesions**: the connected components (26-connectivity, :data:`CONNECTIVITY`) of the true
  enhancing region: the phantom's ground-truth enhancing mask, moved to the model grid lesion by
  lesion (:func:`lesion_truth_to_model_grid`), or on real data the expert tumor mask intersected
  with ``M`` (:func:`lesions_from_region`). A lesion is **found** when at least
  :data:`FOUND_FRACTION` of its model-grid voxels have ``E' > t`` (a quarter: enhancing rims are
  one or two voxels thick on the model grid, so partial volume keeps some of them below ``t``).
  Lesion sensitivity is found / scored lesions, also for lesions below and from
  :data:`SMALL_LESION_MM` equivalent diameter (``(6 V / pi)^(1/3)``, ``V`` the lesion's volume on
  its native grid). A lesion smaller than one model voxel is noted, never scored.
* **False-positive enhancing components**: components of ``[E' > t]`` in the brain that touch
  (overlap or neighbour, 26-connectivity) no truly enhancing voxel (``M`` or a lesion).
* **BraSyn SSIM**: both images clipped to their own 0.5-99.5 percentiles in the brain and
  rescaled to [0, 1], then the slice SSIM of :mod:`cesynth.evaluate` inside the tumor mask and
  in the brain outside it (:func:`brasyn_ssim`; needs a tumor mask).

:func:`enhancement_endpoints` gathers them for one subject; :func:`flatten_endpoints` gives the
per-subject table's :data:`ENDPOINT_COLUMNS`.

The module is a little over 500 lines because the endpoints are one concern: they are defined
together above, share the enhancing truth ``M``, the threshold ``t`` and the brain mask, and
:func:`enhancement_endpoints` computes them in one pass per subject.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

from cesynth.evaluate import region_ssim
from cesynth.io import (
    InputError,
    check_same_grid,
    load_nifti,
    read_json,
    save_nifti,
    write_json,
)

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
"""Neighbourhood of connected components and of touching: 26-connectivity."""
FOUND_FRACTION = 0.25
"""A lesion is found when at least this share of its model-grid voxels has ``E' > t``."""
SMALL_LESION_MM = 5.0
"""Equivalent diameter (mm) splitting small from large lesions."""
BRASYN_PERCENTILES = (0.5, 99.5)
"""Percentiles (in the brain) both images are clipped to for the BraSyn SSIM."""
THRESHOLD_FALLBACK = "fallback: delta, fixed a priori"
"""The threshold source when no validation subject could choose it."""

ENDPOINT_COLUMNS = (
    "enh_brain_corr", "enh_brain_mae", "enh_tumor_corr", "enh_tumor_mae",
    "enh_auc", "enh_sensitivity", "enh_specificity", "enh_dice",
    "lesion_sensitivity", "lesion_sensitivity_small", "lesion_sensitivity_large",
    "lesions_scored", "lesions_not_scored", "false_positives",
    "brasyn_tumor_ssim", "brasyn_outside_ssim",
)
"""Endpoint columns of the per-subject table (NaN where undefined or not applicable)."""


# ---------------------------------------------------------------- enhancement maps


def enhancement_map(image: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """``image - T1`` in float64 (``E`` for the real CE-T1, ``E'`` for the synthetic one)."""
    return np.asarray(image, dtype=np.float64) - np.asarray(t1, dtype=np.float64)


def enhancement_agreement(synthetic: np.ndarray, true: np.ndarray,
                          region: np.ndarray) -> dict[str, float | None]:
    """Pearson correlation and MAE of ``E'`` against ``E`` in a region.

    Returns:
        ``corr`` (None when either map is constant in the region) and ``mae``.
    """
    a, b = synthetic[region], true[region]
    corr = None
    if a.size > 1 and np.ptp(a) > 0 and np.ptp(b) > 0:
        corr = float(np.corrcoef(a, b)[0, 1])
    return {"corr": corr, "mae": float(np.abs(a - b).mean())}


# ---------------------------------------------------------------- voxel-wise detection


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (average ranks: ties count one half).

    Args:
        scores: the detector's values (``E'``), any shape.
        truth: boolean labels, same shape.

    Returns:
        The AUC; NaN when ``truth`` has no positive or no negative.
    """
    scores, truth = np.ravel(scores), np.ravel(truth).astype(bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    u = ranks[truth].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def youden_threshold(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The threshold ``t`` maximising Youden's J of the rule ``score > t``.

    ``t`` lies midway between the lowest value called positive and the next lower value, so
    ``score > t`` calls exactly the chosen values positive; ties in J go to the higher ``t``.

    Args:
        scores: detector values; truth: boolean labels with positives and negatives.

    Returns:
        ``threshold``, ``youden_j``, ``sensitivity`` and ``specificity`` at it.
    """
    scores, truth = np.ravel(scores).astype(np.float64), np.ravel(truth).astype(bool)
    order = np.argsort(-scores, kind="stable")
    ranked, labels = scores[order], truth[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # last index of each value
    tpr = np.cumsum(labels)[ends] / labels.sum()
    fpr = np.cumsum(~labels)[ends] / (~labels).sum()
    best = int(np.argmax(tpr - fpr))
    cut = ends[best]
    lower = ranked[cut + 1] if cut + 1 < ranked.size else ranked[cut] - 1.0
    return {"threshold": float((ranked[cut] + lower) / 2), "youden_j": float(tpr[best] - fpr[best]),
            "sensitivity": float(tpr[best]), "specificity": float(1 - fpr[best])}


def detection_scores(synthetic: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC, sensitivity, specificity and Dice of ``E' > threshold`` against ``M`` (brain voxels).

    Args:
        synthetic: ``E'`` of the brain voxels (1D); truth: ``M`` of the same voxels.
        threshold: ``t``.

    Returns:
        ``auc``, ``sensitivity``, ``specificity`` and ``dice`` (None where undefined).
    """
    called = synthetic > threshold
    positives, negatives = int(truth.sum()), int((~truth).sum())
    both = int((called & truth).sum())
    overlap = int(called.sum()) + positives
    return {"auc": _none_if_nan(roc_auc(synthetic, truth)),
            "sensitivity": both / positives if positives else None,
            "specificity": int((~called & ~truth).sum()) / negatives if negatives else None,
            "dice": 2 * both / overlap if overlap else None}


def choose_threshold(subjects: Sequence[Mapping[str, str | os.PathLike]], delta: float,
                     out_path: str | os.PathLike) -> dict[str, Any]:
    """Choose the ``E'`` threshold on the validation subjects (Youden's J) and write its JSON.

    Args:
        subjects: one mapping per Set A validation subject with ``synthetic`` (the model's
            synthetic CE-T1), ``t1``, ``cet1`` (normalised, model grid) and ``mask`` (brain).
            Never reported subjects: this is a selection.
        delta: the paper's threshold of ``M = [E > delta]``, and the fallback ``t``.
        out_path: the JSON to write.

    Returns:
        What was written: ``threshold``, ``source`` (``validation`` or
        :data:`THRESHOLD_FALLBACK`), ``delta``, ``validation_subjects``, ``validation_voxels``
        and, when chosen on validation, ``youden_j``, ``sensitivity`` and ``specificity``;
        ``note`` says why a fallback was taken.
    """
    scores, truth = [], []
    for files in subjects:
        brain, true_e, synthetic_e = load_enhancement(files["synthetic"], files["t1"],
                                                      files["cet1"], files["mask"])
        scores.append(synthetic_e[brain])
        truth.append(true_e[brain] > delta)
    pooled_scores = np.concatenate(scores) if scores else np.empty(0)
    pooled_truth = np.concatenate(truth) if truth else np.empty(0, dtype=bool)
    record: dict[str, Any] = {"delta": delta, "validation_subjects": len(subjects),
                              "validation_voxels": int(pooled_truth.size)}
    if not subjects:
        note = "no validation subjects"
    elif pooled_truth.all() or not pooled_truth.any():
        note = "the validation subjects have no enhancing or no non-enhancing voxel"
    else:
        record.update(youden_threshold(pooled_scores, pooled_truth), source="validation")
        write_json(record, out_path)
        return record
    record.update(threshold=delta, source=THRESHOLD_FALLBACK,
                  note=f"{note}: threshold = delta ({delta}), fixed a priori")
    write_json(record, out_path)
    return record


def load_enhancement(synthetic_path: str | os.PathLike, t1_path: str | os.PathLike,
                     cet1_path: str | os.PathLike, mask_path: str | os.PathLike
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The brain mask, ``E`` and ``E'`` of one subject from its model-grid files."""
    arrays = [_array(load_nifti(p), p) for p in (synthetic_path, t1_path, cet1_path, mask_path)]
    if len({a.shape for a in arrays}) != 1:
        raise InputError(synthetic_path, f"shapes differ from the T1, CE-T1 and brain mask's: "
                                         f"{[a.shape for a in arrays]}")
    synthetic, t1, cet1, mask = arrays
    return mask != 0, enhancement_map(cet1, t1), enhancement_map(synthetic, t1)


def _array(img: nib.Nifti1Image, path: str | os.PathLike) -> np.ndarray:
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D image, got shape {data.shape}")
    return data


# ---------------------------------------------------------------- lesions


def equivalent_diameter(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere of the given volume."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def lesion_truth_to_model_grid(mask_path: str | os.PathLike, out_labels: str | os.PathLike,
                               out_sidecar: str | os.PathLike, shape: Sequence[int]
                               ) -> dict[str, Any]:
    """Label the lesions of a native-grid enhancing mask and move them to the model grid.

    Each connected component is resampled on its own (nearest neighbour, as the tumor mask is);
    its volume is measured on the native grid. A lesion smaller than one model voxel, or that
    no model voxel samples, is kept in the label map but marked not scored.

    Args:
        mask_path: the true enhancing mask on the native CE-T1 grid (non-zero = enhancing).
        out_labels: the model-grid label map to write (0 background, lesion ``i`` = ``i``).
        out_sidecar: the JSON to write: ``model_voxel_mm3`` and ``lesions`` (``label``,
            ``volume_mm3``, ``diameter_mm``, ``model_voxels``, ``scored``, ``note``).
        shape: the model grid, RAS-canonical ``(x, y, z)``.

    Returns:
        What the sidecar holds.
    """
    from cesynth.normalise import ModelGrid

    native = load_nifti(mask_path)
    grid = ModelGrid(tuple(shape))
    labels, count = ndimage.label(_array(native, mask_path) != 0, structure=CONNECTIVITY)
    native_voxel_mm3 = float(abs(np.linalg.det(native.affine[:3, :3])))
    model_voxel_mm3 = float(np.prod(grid.voxel_size_for(native)))
    empty = grid.resample(nib.Nifti1Image(np.zeros(labels.shape, np.uint8), native.affine),
                          is_mask=True)
    model_labels = np.zeros(grid.shape, dtype=np.uint16)
    lesions = []
    for label in range(1, count + 1):
        img = nib.Nifti1Image((labels == label).astype(np.uint8), native.affine)
        sampled = (np.asarray(grid.resample(img, is_mask=True).dataobj) > 0) & (model_labels == 0)
        model_labels[sampled] = label
        volume = float((labels == label).sum()) * native_voxel_mm3
        lesions.append(_lesion_entry(label, volume, int(sampled.sum()), model_voxel_mm3))
    save_nifti(model_labels, empty.affine, out_labels, dtype=np.uint16)
    record = {"connectivity": 26, "model_voxel_mm3": model_voxel_mm3, "lesions": lesions}
    write_json(record, out_sidecar)
    return record


def _lesion_entry(label: int, volume_mm3: float, model_voxels: int,
                  model_voxel_mm3: float) -> dict[str, Any]:
    note = None
    if volume_mm3 < model_voxel_mm3:
        note = f"smaller than one model voxel ({volume_mm3:.1f} < {model_voxel_mm3:.1f} mm3)"
    elif model_voxels == 0:
        note = "no model voxel samples it"
    return {"label": label, "volume_mm3": volume_mm3,
            "diameter_mm": equivalent_diameter(volume_mm3), "model_voxels": model_voxels,
            "scored": note is None, "note": note}


def lesions_from_region(region: np.ndarray, voxel_mm3: float
                        ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Lesions as the components of a model-grid region (real data: tumor mask and ``M``).

    Returns:
        The label map and one :func:`lesion_truth_to_model_grid`-style entry per lesion (all
        scored: each holds at least one model voxel).
    """
    labels, count = ndimage.label(region, structure=CONNECTIVITY)
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, range(1, count + 1))
    return labels, [_lesion_entry(i + 1, float(n) * voxel_mm3, int(n), voxel_mm3)
                    for i, n in enumerate(sizes)]


def score_lesions(labels: np.ndarray, lesions: Sequence[Mapping[str, Any]],
                  called: np.ndarray) -> list[dict[str, Any]]:
    """Each lesion found or missed: found when :data:`FOUND_FRACTION` of its voxels are called.

    Args:
        labels: the model-grid lesion label map.
        lesions: entries as :func:`lesion_truth_to_model_grid` writes them.
        called: ``E' > t`` on the model grid (boolean).

    Returns:
        The entries with ``detected_fraction`` and ``found`` added (None for unscored lesions).
    """
    scored = []
    for lesion in lesions:
        inside = labels == lesion["label"]
        fraction = float(called[inside].mean()) if lesion["scored"] and inside.any() else None
        found = None if fraction is None else fraction >= FOUND_FRACTION
        scored.append({**lesion, "detected_fraction": fraction, "found": found})
    return scored


def lesion_summary(lesions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and sensitivities (all, below and from :data:`SMALL_LESION_MM`) of scored lesions."""
    scored = [lesion for lesion in lesions if lesion["found"] is not None]
    small = [lesion for lesion in scored if lesion["diameter_mm"] < SMALL_LESION_MM]
    large = [lesion for lesion in scored if lesion["diameter_mm"] >= SMALL_LESION_MM]
    return {"scored": len(scored), "not_scored": len(lesions) - len(scored),
            "found": sum(bool(lesion["found"]) for lesion in scored),
            "sensitivity": _share_found(scored), "sensitivity_small": _share_found(small),
            "sensitivity_large": _share_found(large)}


def _share_found(lesions: Sequence[Mapping[str, Any]]) -> float | None:
    return sum(bool(lesion["found"]) for lesion in lesions) / len(lesions) if lesions else None


def false_positive_components(called: np.ndarray, enhancing: np.ndarray) -> int:
    """Components of ``called`` that overlap or neighbour no truly enhancing voxel."""
    labels, count = ndimage.label(called, structure=CONNECTIVITY)
    near = ndimage.binary_dilation(enhancing, structure=CONNECTIVITY)
    touching = np.unique(labels[near & (labels > 0)])
    return int(count - touching.size)


# ---------------------------------------------------------------- BraSyn SSIM


def brasyn_ssim(pred: np.ndarray, target: np.ndarray, brain: np.ndarray,
                tumor: np.ndarray) -> dict[str, float | None]:
    """Slice SSIM inside and outside the tumor after BraSyn's percentile clipping.

    Args:
        pred, target: model-grid volumes; brain, tumor: boolean masks of the same shape.

    Returns:
        ``tumor`` and ``outside`` (the brain less the tumor; None when empty).
    """
    clipped = [_clip_rescale(image, brain) for image in (pred, target)]
    outside = brain & ~tumor
    return {"tumor": region_ssim(*clipped, tumor) if tumor.any() else None,
            "outside": region_ssim(*clipped, outside) if outside.any() else None}


def _clip_rescale(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The image clipped to its :data:`BRASYN_PERCENTILES` in the brain, rescaled to [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image[brain], BRASYN_PERCENTILES)
    if high <= low:
        return np.zeros_like(image)
    return (np.clip(image, low, high) - low) / (high - low)


# ---------------------------------------------------------------- one subject


def enhancement_endpoints(synthetic: np.ndarray, t1: np.ndarray, cet1: np.ndarray,
                          brain: np.ndarray, threshold: Mapping[str, Any], *,
                          tumor: np.ndarray | None = None,
                          lesion_labels: np.ndarray | None = None,
                          lesions: Sequence[Mapping[str, Any]] | None = None,
                          voxel_mm3: float = 1.0) -> dict[str, Any]:
    """Every enhancement endpoint of one subject (see the module docstring).

    Args:
        synthetic, t1, cet1: model-grid volumes (synthetic CE-T1, normalised T1 and CE-T1).
        brain: boolean brain mask.
        threshold: the model's threshold record (:func:`choose_threshold`).
        tumor: boolean tumor mask (Set B), or None.
        lesion_labels, lesions: the lesion truth (:func:`lesion_truth_to_model_grid`); without
            it, the lesions are the components of ``tumor & M`` (none without a tumor mask).
        voxel_mm3: the model voxel's volume, for lesions made from the tumor mask.

    Returns:
        ``threshold``, ``threshold_source``, ``delta``, ``brain`` and ``tumor`` (corr, mae),
        ``auc``, ``sensitivity``, ``specificity``, ``dice``, ``false_positives``,
        ``lesion_truth`` and ``lesions`` (:func:`lesion_summary` plus ``items``).
    """
    delta, t = float(threshold["delta"]), float(threshold["threshold"])
    true_e, synthetic_e = enhancement_map(cet1, t1), enhancement_map(synthetic, t1)
    truth = (true_e > delta) & brain
    called = (synthetic_e > t) & brain
    record: dict[str, Any] = {"threshold": t, "threshold_source": threshold["source"],
                              "delta": delta,
                              "brain": enhancement_agreement(synthetic_e, true_e, brain)}
    if tumor is not None and tumor.any():
        record["tumor"] = enhancement_agreement(synthetic_e, true_e, tumor)
    record.update(detection_scores(synthetic_e[brain], truth[brain], t))
    source = "phantom enhancing mask"
    if lesion_labels is None and tumor is not None:
        lesion_labels, lesions = lesions_from_region(tumor & truth, voxel_mm3)
        source = "tumor mask and M"
    enhancing = truth if lesion_labels is None else truth | (lesion_labels > 0)
    record["false_positives"] = false_positive_components(called, enhancing)
    if lesion_labels is not None:
        items = score_lesions(lesion_labels, lesions or [], called)
        record["lesion_truth"] = source
        record["lesions"] = {**lesion_summary(items), "items": items}
    return record


def score_files(pred_path: str | os.PathLike, target_path: str | os.PathLike,
                mask_path: str | os.PathLike, *, t1_path: str | os.PathLike | None = None,
                threshold_path: str | os.PathLike | None = None,
                tumor_mask_path: str | os.PathLike | None = None,
                lesion_labels_path: str | os.PathLike | None = None,
                lesion_sidecar_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The endpoints of one subject's files on the model grid (checked to share the grid).

    Args:
        pred_path, target_path, mask_path: synthetic and real CE-T1, brain mask.
        t1_path, threshold_path: the normalised T1 and the model's threshold JSON; the
            enhancement endpoints need both.
        tumor_mask_path: the model-grid tumor mask (the BraSyn SSIM needs it).
        lesion_labels_path, lesion_sidecar_path: the phantom's lesion truth, when it exists.

    Returns:
        ``enhancement`` (:func:`enhancement_endpoints`) and ``brasyn`` where computable, and
        ``notes`` (lesions noted, not scored).
    """
    paths = {"pred": pred_path, "target": target_path, "mask": mask_path, "t1": t1_path,
             "tumor": tumor_mask_path, "lesions": lesion_labels_path}
    images = {key: load_nifti(path) for key, path in paths.items() if path is not None}
    for key, img in images.items():
        check_same_grid(img, images["pred"], paths[key], f"the {Path(pred_path).name}")
    arrays = {key: _array(img, paths[key]) for key, img in images.items()}
    brain = arrays["mask"] != 0
    tumor = arrays["tumor"] != 0 if "tumor" in arrays else None
    record: dict[str, Any] = {"notes": []}
    if tumor is not None:
        record["brasyn"] = brasyn_ssim(arrays["pred"], arrays["target"], brain, tumor)
    if t1_path is None or threshold_path is None:
        return record
    labels, lesions = None, None
    if lesion_labels_path is not None and lesion_sidecar_path is not None:
        labels, lesions = read_lesion_truth(lesion_labels_path, lesion_sidecar_path)
    voxel_mm3 = float(abs(np.linalg.det(images["pred"].affine[:3, :3])))
    record["enhancement"] = enhancement_endpoints(
        arrays["pred"], arrays["t1"], arrays["target"], brain, read_json(threshold_path),
        tumor=tumor, lesion_labels=labels, lesions=lesions, voxel_mm3=voxel_mm3)
    record["notes"] += [f"enhancing lesion {lesion['label']}: {lesion['note']}: noted, not "
                        "scored" for lesion in lesions or [] if not lesion["scored"]]
    return record


def flatten_endpoints(record: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`ENDPOINT_COLUMNS` of a subject record (NaN where absent)."""
    enhancement = record.get("enhancement") or {}
    lesions = enhancement.get("lesions") or {}
    brasyn = record.get("brasyn") or {}
    values = {
        "enh_brain_corr": (enhancement.get("brain") or {}).get("corr"),
        "enh_brain_mae": (enhancement.get("brain") or {}).get("mae"),
        "enh_tumor_corr": (enhancement.get("tumor") or {}).get("corr"),
        "enh_tumor_mae": (enhancement.get("tumor") or {}).get("mae"),
        "enh_auc": enhancement.get("auc"), "enh_sensitivity": enhancement.get("sensitivity"),
        "enh_specificity": enhancement.get("specificity"), "enh_dice": enhancement.get("dice"),
        "lesion_sensitivity": lesions.get("sensitivity"),
        "lesion_sensitivity_small": lesions.get("sensitivity_small"),
        "lesion_sensitivity_large": lesions.get("sensitivity_large"),
        "lesions_scored": lesions.get("scored"), "lesions_not_scored": lesions.get("not_scored"),
        "false_positives": enhancement.get("false_positives"),
        "brasyn_tumor_ssim": brasyn.get("tumor"), "brasyn_outside_ssim": brasyn.get("outside"),
    }
    return {key: math.nan if values[key] is None else float(values[key])
            for key in ENDPOINT_COLUMNS}


def lesion_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per scored lesion of a subject record: ``volume_mm3``, ``diameter_mm``, ``found``."""
    items = ((record.get("enhancement") or {}).get("lesions") or {}).get("items") or []
    return [{"lesion": item["label"], "volume_mm3": item["volume_mm3"],
             "diameter_mm": item["diameter_mm"], "found": bool(item["found"])}
            for item in items if item["found"] is not None]


def read_lesion_truth(labels_path: str | os.PathLike, sidecar_path: str | os.PathLike
                      ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The model-grid lesion label map and its entries, as :func:`lesion_truth_to_model_grid`
    wrote them."""
    labels = np.rint(_array(load_nifti(labels_path), labels_path)).astype(np.int64)
    return labels, list(read_json(sidecar_path).get("lesions", []))


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


__all__ = [
    "BRASYN_PERCENTILES", "CONNECTIVITY", "ENDPOINT_COLUMNS", "FOUND_FRACTION",
    "SMALL_LESION_MM", "THRESHOLD_FALLBACK",
    "brasyn_ssim", "choose_threshold", "detection_scores", "enhancement_agreement",
    "enhancement_endpoints", "enhancement_map", "equivalent_diameter",
    "false_positive_components", "flatten_endpoints", "lesion_rows", "lesion_summary",
    "lesion_truth_to_model_grid", "lesions_from_region", "load_enhancement",
    "read_lesion_truth", "roc_auc", "score_files", "score_lesions", "youden_threshold",
]
