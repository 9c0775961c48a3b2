"""Endpoints a reader needs: enhancement where the agent is, lesion by lesion, and BraSyn SSIM.

Images are the normalised model-grid volumes :mod:`cesynth.evaluate` scores (intensities in
[0, 1], zero outside the brain). The truth is the model-grid class map and lesion instances of
:mod:`cesynth.lesion_truth` (the phantom's agent map and lesion segmentation, or a real cohort's
expert labels), never a difference of separately normalised images. Definitions (every voxel
count is inside the brain mask):

* **Enhancement maps**: the true ``E = CE-T1 - T1`` and the synthetic ``E' = synthetic CE-T1 -
  T1``; their Pearson correlation and MAE in the brain and, with a tumor mask, in the tumor
  (:func:`enhancement_agreement`). Descriptive only: ``E`` is not the truth of any endpoint.
* **Brain-wide detection**: ROC AUC of ``E'`` for the agent voxels (classes 4 and 5: enhancing
  tumor and, on the phantom, vessels) against all other brain voxels, by the Mann-Whitney rank
  formula (ties count one half, so a constant ``E'`` gives 0.5, :func:`roc_auc`); sensitivity,
  specificity and Dice of ``[E' > t]`` at a threshold ``t`` chosen on validation subjects with
  lesions only (:func:`choose_threshold`: Youden's J over their pooled brain voxels against the
  same truth). Without such subjects ``t = delta`` (``train.delta``), fixed a priori, and the
  threshold record says so.
* **Within-lesion detection**: the ROC AUC of ``E'`` for the enhancing voxels of the lesions
  (class 4) against their non-enhancing voxels (classes 1 and 2: necrotic or non-enhancing core,
  edema, non-enhancing lesions). Painting a whole lesion one grey scores 0.5 here.
* **Recovered share**: the synthetic contrast between the enhancing and the non-enhancing parts
  of the lesions (mean ``E'`` in class 4 minus mean ``E'`` in classes 1 and 2) over the same
  contrast of the real CE-T1 (with ``E``): 1 reproduces it, 0 paints them alike, below 0
  reverses it. Undefined unless the true contrast is positive.
* **Lesions found**: an enhancing lesion is found when more than :data:`FOUND_FRACTION` (half)
  of its enhancing model voxels have ``E' > t``; sensitivity overall and below / from
  :data:`SMALL_LESION_MM` (equivalent diameter of the lesion's tumor part). A **non-enhancing
  lesion is called** when more than half of its voxels have ``E' > t``.
* **False-positive components**: components (26-connectivity) of ``[E' > t]`` in the brain of at
  least :data:`FP_MIN_VOLUME_MM3` that touch no agent voxel dilated by :data:`FP_MARGIN_MM`;
  brightening a non-enhancing lesion therefore counts. Counted on every scored subject, with
  lesions or without.
* **Degenerate threshold**: when ``[E' > t]`` calls more than :data:`DEGENERATE_CALLED_SHARE` of
  the brain (on the validation subjects or on the subject), sensitivity, Dice, lesions found and
  false positives say nothing: they are left empty (NaN) and ``threshold_degenerate`` is 1.
* **BraSyn SSIM**: both images clipped to their own 0.5-99.5 percentiles in the brain and
  rescaled to [0, 1], then the slice SSIM of :mod:`cesynth.evaluate` inside the tumor mask and
  in the brain outside it (:func:`brasyn_ssim`; needs a tumor mask).

:func:`enhancement_endpoints` gathers them for one subject; :func:`flatten_endpoints` gives the
per-subject table's :data:`ENDPOINT_COLUMNS`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

from cesynth.evaluate import region_ssim
from cesynth.io import InputError, check_same_grid, load_nifti, read_json, write_json
from cesynth.lesion_truth import (
    AGENT_CLASSES,
    CONNECTIVITY,
    EDEMA,
    ENHANCING,
    LESION_CLASSES,
    NON_ENHANCING,
    read_lesion_truth,
)

FOUND_FRACTION = 0.5
"""A lesion is found (called) when more than this share of its voxels has ``E' > t``."""
SMALL_LESION_MM = 5.0
"""Equivalent diameter (mm) splitting small from large lesions."""
FP_MIN_VOLUME_MM3 = 20.0
"""Smallest false-positive component counted (mm3; about a 3.4 mm sphere). On a model grid
coarser than this one voxel is enough."""
FP_MARGIN_MM = 3.0
"""A called component within this distance of an agent voxel is not a false positive."""
DEGENERATE_CALLED_SHARE = 0.5
"""A threshold calling more than this share of the brain is degenerate (the truth is ~1-3 %)."""
BRASYN_PERCENTILES = (0.5, 99.5)
"""Percentiles (in the brain) both images are clipped to for the BraSyn SSIM."""
THRESHOLD_FALLBACK = "fallback: delta, fixed a priori"
"""The threshold source when no validation subject could choose it."""

DETECTION_COLUMNS = (
    "enh_sensitivity", "enh_specificity", "enh_dice", "lesion_sensitivity",
    "lesion_sensitivity_small", "lesion_sensitivity_large", "nonenhancing_called",
    "false_positives",
)
"""Endpoints at the threshold: empty when the threshold is degenerate."""
ENDPOINT_COLUMNS = (
    "enh_brain_corr", "enh_brain_mae", "enh_tumor_corr", "enh_tumor_mae",
    "enh_auc", "enh_lesion_auc", "enh_recovered_share", "enh_core_auc",
    "enh_core_recovered_share", "enh_sensitivity", "enh_specificity", "enh_dice",
    "enh_called_share",
    "lesion_sensitivity", "lesion_sensitivity_small", "lesion_sensitivity_large",
    "lesions_scored", "lesions_not_scored", "nonenhancing_lesions", "nonenhancing_called",
    "false_positives", "threshold_degenerate",
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
    """AUC, sensitivity, specificity, Dice and called share of ``E' > threshold`` (brain voxels).

    Args:
        synthetic: ``E'`` of the brain voxels (1D); truth: the agent truth of the same voxels.
        threshold: ``t``.

    Returns:
        ``auc``, ``sensitivity``, ``specificity``, ``dice`` and ``called_share`` (None where
        undefined).
    """
    called = synthetic > threshold
    positives, negatives = int(truth.sum()), int((~truth).sum())
    both = int((called & truth).sum())
    overlap = int(called.sum()) + positives
    return {"auc": _none_if_nan(roc_auc(synthetic, truth)),
            "sensitivity": both / positives if positives else None,
            "specificity": int((~called & ~truth).sum()) / negatives if negatives else None,
            "dice": 2 * both / overlap if overlap else None,
            "called_share": float(called.mean()) if called.size else None}


def within_lesion_scores(true_e: np.ndarray, synthetic_e: np.ndarray,
                         classes: np.ndarray) -> dict[str, float | None]:
    """Within-lesion AUC and the recovered share of the enhancing-vs-non-enhancing contrast,
    against the whole rest of the lesion (core and edema) and against the core alone.

    Against the rest of the lesion, a model that brightens the tumor core (rim and necrosis
    alike) but not the edema scores above one half; against the core alone (``core_auc``,
    ``core_recovered_share``) only one that draws the enhancing part brighter than the necrotic
    or non-enhancing tissue it surrounds does.

    Args:
        true_e, synthetic_e: ``E`` and ``E'`` on the model grid.
        classes: the model-grid class map (brain voxels only are passed in by the caller).

    Returns:
        ``lesion_auc``, ``contrast_true``, ``contrast_synthetic``, ``recovered_share`` and
        ``core_auc``, ``core_recovered_share`` (None where the lesions lack enhancing or
        non-enhancing voxels, or the true contrast is not positive).
    """
    enhancing = classes == ENHANCING
    rest = _contrast_scores(true_e, synthetic_e, enhancing,
                            np.isin(classes, (NON_ENHANCING, EDEMA)))
    core = _contrast_scores(true_e, synthetic_e, enhancing, classes == NON_ENHANCING)
    return {**rest, "core_auc": core["lesion_auc"],
            "core_recovered_share": core["recovered_share"]}


def _contrast_scores(true_e: np.ndarray, synthetic_e: np.ndarray, enhancing: np.ndarray,
                     other: np.ndarray) -> dict[str, float | None]:
    """AUC of ``E'`` for enhancing against ``other`` voxels, and the share of the true mean
    contrast between them that ``E'`` recovers."""
    record: dict[str, float | None] = {"lesion_auc": None, "contrast_true": None,
                                       "contrast_synthetic": None, "recovered_share": None}
    if not enhancing.any() or not other.any():
        return record
    in_lesion = enhancing | other
    record["lesion_auc"] = _none_if_nan(roc_auc(synthetic_e[in_lesion], enhancing[in_lesion]))
    true_contrast = float(true_e[enhancing].mean() - true_e[other].mean())
    synthetic_contrast = float(synthetic_e[enhancing].mean() - synthetic_e[other].mean())
    record.update(contrast_true=true_contrast, contrast_synthetic=synthetic_contrast)
    if true_contrast > 0:
        record["recovered_share"] = synthetic_contrast / true_contrast
    return record


def choose_threshold(subjects: Sequence[Mapping[str, str | os.PathLike]], delta: float,
                     out_path: str | os.PathLike) -> dict[str, Any]:
    """Choose the ``E'`` threshold on validation subjects with lesions (Youden's J), write JSON.

    Args:
        subjects: one mapping per validation subject with ``synthetic`` (the model's synthetic
            CE-T1), ``t1`` (normalised, model grid), ``mask`` (brain) and ``classes`` (its
            model-grid class map, :mod:`cesynth.lesion_truth`). Never reported subjects: this
            is a selection.
        delta: the fallback ``t``, fixed a priori.
        out_path: the JSON to write.

    Returns:
        What was written: ``threshold``, ``source`` (``validation`` or
        :data:`THRESHOLD_FALLBACK`), ``delta``, ``validation_subjects``,
        ``validation_subjects_with_lesions``, ``validation_voxels``, ``called_share`` (of the
        validation brain voxels at the threshold), ``degenerate`` and, when chosen on
        validation, ``youden_j``, ``sensitivity`` and ``specificity``; ``note`` says why a
        fallback was taken.
    """
    scores, truth, with_lesions = [], [], 0
    for files in subjects:
        brain, synthetic_e, classes = _load_validation_subject(files)
        scores.append(synthetic_e[brain])
        truth.append(np.isin(classes[brain], AGENT_CLASSES))
        with_lesions += bool(np.isin(classes, LESION_CLASSES).any())
    pooled_scores = np.concatenate(scores) if scores else np.empty(0)
    pooled_truth = np.concatenate(truth) if truth else np.empty(0, dtype=bool)
    record: dict[str, Any] = {"delta": delta, "validation_subjects": len(subjects),
                              "validation_subjects_with_lesions": with_lesions,
                              "validation_voxels": int(pooled_truth.size)}
    if not subjects:
        note = "no validation subjects"
    elif not with_lesions:
        note = "no validation subject has a lesion"
    elif pooled_truth.all() or not pooled_truth.any():
        note = "the validation subjects have no agent or no agent-free brain voxel"
    else:
        record.update(youden_threshold(pooled_scores, pooled_truth), source="validation")
        return _write_threshold(record, pooled_scores, out_path)
    record.update(threshold=delta, source=THRESHOLD_FALLBACK,
                  note=f"{note}: threshold = delta ({delta}), fixed a priori")
    return _write_threshold(record, pooled_scores, out_path)


def _write_threshold(record: dict[str, Any], scores: np.ndarray,
                     out_path: str | os.PathLike) -> dict[str, Any]:
    share = float((scores > record["threshold"]).mean()) if scores.size else None
    record.update(called_share=share,
                  degenerate=share is not None and share > DEGENERATE_CALLED_SHARE)
    write_json(record, out_path)
    return record


def _load_validation_subject(files: Mapping[str, str | os.PathLike]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The brain mask, ``E'`` and the class map of one validation subject."""
    arrays = [_array(load_nifti(files[key]), files[key])
              for key in ("synthetic", "t1", "mask", "classes")]
    if len({a.shape for a in arrays}) != 1:
        raise InputError(files["synthetic"], "shapes differ from the T1, brain mask and class "
                                             f"map's: {[a.shape for a in arrays]}")
    synthetic, t1, mask, classes = arrays
    return mask != 0, enhancement_map(synthetic, t1), np.rint(classes).astype(np.int64)


def _array(img: nib.Nifti1Image, path: str | os.PathLike) -> np.ndarray:
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D image, got shape {data.shape}")
    return data


# ---------------------------------------------------------------- lesions


def score_lesions(instances: np.ndarray, lesions: Sequence[Mapping[str, Any]],
                  classes: np.ndarray, called: np.ndarray) -> list[dict[str, Any]]:
    """Each scored lesion found (enhancing) or called (non-enhancing).

    Args:
        instances: the model-grid lesion instance map.
        lesions: entries as :func:`cesynth.lesion_truth.lesion_truth_to_model_grid` writes them.
        classes: the model-grid class map.
        called: ``E' > t`` on the model grid (boolean).

    Returns:
        The entries with ``detected_fraction`` (of the enhancing voxels for an enhancing
        lesion, of all its voxels otherwise) and ``found`` added (None for unscored lesions).
    """
    scored = []
    for lesion in lesions:
        inside = instances == lesion["label"]
        if lesion.get("enhancing", True):
            inside &= classes == ENHANCING
        fraction = float(called[inside].mean()) if lesion["scored"] and inside.any() else None
        found = None if fraction is None else fraction > FOUND_FRACTION
        scored.append({**lesion, "detected_fraction": fraction, "found": found})
    return scored


def lesion_summary(lesions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and sensitivities (all, below and from :data:`SMALL_LESION_MM`) of scored
    enhancing lesions, and how many scored non-enhancing lesions were called."""
    scored = [item for item in lesions if item["found"] is not None]
    enhancing = [item for item in scored if item.get("enhancing", True)]
    quiet = [item for item in scored if not item.get("enhancing", True)]
    small = [item for item in enhancing if item["diameter_mm"] < SMALL_LESION_MM]
    large = [item for item in enhancing if item["diameter_mm"] >= SMALL_LESION_MM]
    return {"scored": len(enhancing), "not_scored": len(lesions) - len(scored),
            "found": sum(bool(item["found"]) for item in enhancing),
            "sensitivity": _share_found(enhancing), "sensitivity_small": _share_found(small),
            "sensitivity_large": _share_found(large), "nonenhancing": len(quiet),
            "nonenhancing_called": sum(bool(item["found"]) for item in quiet)}


def _share_found(lesions: Sequence[Mapping[str, Any]]) -> float | None:
    return sum(bool(item["found"]) for item in lesions) / len(lesions) if lesions else None


def false_positive_components(called: np.ndarray, agent: np.ndarray,
                              voxel_mm: Sequence[float]) -> int:
    """Components of ``called`` of at least :data:`FP_MIN_VOLUME_MM3` that come no nearer than
    :data:`FP_MARGIN_MM` to an agent voxel."""
    labels, count = ndimage.label(called, structure=CONNECTIVITY)
    if count == 0:
        return 0
    fewest_voxels = max(1, math.ceil(FP_MIN_VOLUME_MM3 / float(np.prod(voxel_mm)) - 1e-9))
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, range(1, count + 1))
    large = np.flatnonzero(sizes >= fewest_voxels) + 1
    if not agent.any():
        return int(large.size)
    near = ndimage.distance_transform_edt(~agent, sampling=voxel_mm) <= FP_MARGIN_MM
    touching = np.unique(labels[near & (labels > 0)])
    return int(np.setdiff1d(large, touching).size)


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
                          brain: np.ndarray, threshold: Mapping[str, Any],
                          classes: np.ndarray, *, tumor: np.ndarray | None = None,
                          instances: np.ndarray | None = None,
                          lesions: Sequence[Mapping[str, Any]] | None = None,
                          voxel_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, Any]:
    """Every enhancement endpoint of one subject (see the module docstring).

    Args:
        synthetic, t1, cet1: model-grid volumes (synthetic CE-T1, normalised T1 and CE-T1).
        brain: boolean brain mask.
        threshold: the model's threshold record (:func:`choose_threshold`).
        classes: the model-grid class map (:mod:`cesynth.lesion_truth`).
        tumor: boolean tumor mask (Set B), or None.
        instances, lesions: the model-grid lesion instances and their entries.
        voxel_mm: the model voxel's size (false-positive volume and margin).

    Returns:
        ``threshold``, ``threshold_source``, ``delta``, ``brain`` and ``tumor`` (corr, mae),
        ``auc``, ``sensitivity``, ``specificity``, ``dice``, ``called_share``, ``lesion_auc``,
        ``contrast_true``, ``contrast_synthetic``, ``recovered_share``, ``false_positives``,
        ``degenerate`` and ``lesions`` (:func:`lesion_summary` plus ``items``).
    """
    t = float(threshold["threshold"])
    true_e, synthetic_e = enhancement_map(cet1, t1), enhancement_map(synthetic, t1)
    classes = np.where(brain, classes, 0)
    agent = np.isin(classes, AGENT_CLASSES)
    called = (synthetic_e > t) & brain
    record: dict[str, Any] = {"threshold": t, "threshold_source": threshold["source"],
                              "delta": float(threshold["delta"]),
                              "brain": enhancement_agreement(synthetic_e, true_e, brain)}
    if tumor is not None and tumor.any():
        record["tumor"] = enhancement_agreement(synthetic_e, true_e, tumor)
    record.update(detection_scores(synthetic_e[brain], agent[brain], t))
    record.update(within_lesion_scores(true_e, synthetic_e, classes))
    record["false_positives"] = false_positive_components(called, agent, voxel_mm)
    record["degenerate"] = bool(threshold.get("degenerate")) or (
        record["called_share"] is not None and record["called_share"] > DEGENERATE_CALLED_SHARE)
    if instances is not None:
        items = score_lesions(instances, lesions or [], classes, called)
        record["lesions"] = {**lesion_summary(items), "items": items}
    return record


def score_files(pred_path: str | os.PathLike, target_path: str | os.PathLike,
                mask_path: str | os.PathLike, *, t1_path: str | os.PathLike | None = None,
                threshold_path: str | os.PathLike | None = None,
                tumor_mask_path: str | os.PathLike | None = None,
                classes_path: str | os.PathLike | None = None,
                instances_path: str | os.PathLike | None = None,
                lesion_sidecar_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The endpoints of one subject's files on the model grid (checked to share the grid).

    Args:
        pred_path, target_path, mask_path: synthetic and real CE-T1, brain mask.
        t1_path, threshold_path: the normalised T1 and the model's threshold JSON.
        tumor_mask_path: the model-grid tumor mask (the BraSyn SSIM needs it).
        classes_path, instances_path, lesion_sidecar_path: the subject's enhancement truth
            (:func:`cesynth.lesion_truth.lesion_truth_to_model_grid`); the enhancement
            endpoints need it with the T1 and the threshold.

    Returns:
        ``enhancement`` (:func:`enhancement_endpoints`) and ``brasyn`` where computable, and
        ``notes`` (lesions noted, not scored; endpoints without truth).
    """
    paths = {"pred": pred_path, "target": target_path, "mask": mask_path, "t1": t1_path,
             "tumor": tumor_mask_path, "classes": classes_path, "instances": instances_path}
    images = {key: load_nifti(path) for key, path in paths.items() if path is not None}
    for key, img in images.items():
        check_same_grid(img, images["pred"], paths[key], f"the {os.path.basename(pred_path)}")
    arrays = {key: _array(img, paths[key]) for key, img in images.items()}
    brain = arrays["mask"] != 0
    tumor = arrays["tumor"] != 0 if "tumor" in arrays else None
    record: dict[str, Any] = {"notes": []}
    if tumor is not None:
        record["brasyn"] = brasyn_ssim(arrays["pred"], arrays["target"], brain, tumor)
    if t1_path is None or threshold_path is None:
        return record
    if classes_path is None or instances_path is None or lesion_sidecar_path is None:
        record["notes"].append("no enhancement truth (the phantom's agent map or an expert "
                               "enhancing-tumor label): no enhancement endpoints")
        return record
    classes, instances, lesions = read_lesion_truth(classes_path, instances_path,
                                                    lesion_sidecar_path)
    voxel_mm = tuple(float(v) for v in images["pred"].header.get_zooms()[:3])
    record["enhancement"] = enhancement_endpoints(
        arrays["pred"], arrays["t1"], arrays["target"], brain, read_json(threshold_path),
        classes, tumor=tumor, instances=instances, lesions=lesions, voxel_mm=voxel_mm)
    record["notes"] += [f"lesion {lesion['label']} ({lesion.get('type', 'lesion')}): "
                        f"{lesion['note']}: noted, not scored"
                        for lesion in lesions if not lesion["scored"]]
    return record


def flatten_endpoints(record: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`ENDPOINT_COLUMNS` of a subject record (NaN where absent or, for
    :data:`DETECTION_COLUMNS`, where the threshold is degenerate)."""
    enhancement = record.get("enhancement") or {}
    lesions = enhancement.get("lesions") or {}
    brasyn = record.get("brasyn") or {}
    degenerate = enhancement.get("degenerate")
    values = {
        "enh_brain_corr": (enhancement.get("brain") or {}).get("corr"),
        "enh_brain_mae": (enhancement.get("brain") or {}).get("mae"),
        "enh_tumor_corr": (enhancement.get("tumor") or {}).get("corr"),
        "enh_tumor_mae": (enhancement.get("tumor") or {}).get("mae"),
        "enh_auc": enhancement.get("auc"), "enh_lesion_auc": enhancement.get("lesion_auc"),
        "enh_recovered_share": enhancement.get("recovered_share"),
        "enh_core_auc": enhancement.get("core_auc"),
        "enh_core_recovered_share": enhancement.get("core_recovered_share"),
        "enh_sensitivity": enhancement.get("sensitivity"),
        "enh_specificity": enhancement.get("specificity"), "enh_dice": enhancement.get("dice"),
        "enh_called_share": enhancement.get("called_share"),
        "lesion_sensitivity": lesions.get("sensitivity"),
        "lesion_sensitivity_small": lesions.get("sensitivity_small"),
        "lesion_sensitivity_large": lesions.get("sensitivity_large"),
        "lesions_scored": lesions.get("scored"), "lesions_not_scored": lesions.get("not_scored"),
        "nonenhancing_lesions": lesions.get("nonenhancing"),
        "nonenhancing_called": lesions.get("nonenhancing_called"),
        "false_positives": enhancement.get("false_positives"),
        "threshold_degenerate": None if degenerate is None else int(degenerate),
        "brasyn_tumor_ssim": brasyn.get("tumor"), "brasyn_outside_ssim": brasyn.get("outside"),
    }
    if degenerate:
        values.update(dict.fromkeys(DETECTION_COLUMNS))
    return {key: math.nan if values[key] is None else float(values[key])
            for key in ENDPOINT_COLUMNS}


def lesion_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per scored enhancing lesion of a subject record: ``volume_mm3``,
    ``diameter_mm``, ``type``, ``found`` (none when the threshold is degenerate)."""
    enhancement = record.get("enhancement") or {}
    if enhancement.get("degenerate"):
        return []
    items = (enhancement.get("lesions") or {}).get("items") or []
    return [{"lesion": item["label"], "type": item.get("type", "lesion"),
             "volume_mm3": item["volume_mm3"], "diameter_mm": item["diameter_mm"],
             "found": bool(item["found"])}
            for item in items if item["found"] is not None and item.get("enhancing", True)]


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


__all__ = [
    "BRASYN_PERCENTILES", "DEGENERATE_CALLED_SHARE", "DETECTION_COLUMNS", "ENDPOINT_COLUMNS",
    "FOUND_FRACTION", "FP_MARGIN_MM", "FP_MIN_VOLUME_MM3", "SMALL_LESION_MM",
    "THRESHOLD_FALLBACK",
    "brasyn_ssim", "choose_threshold", "detection_scores", "enhancement_agreement",
    "enhancement_endpoints", "enhancement_map", "false_positive_components",
    "flatten_endpoints", "lesion_rows", "lesion_summary", "roc_auc", "score_files",
    "score_lesions", "within_lesion_scores", "youden_threshold",
]
