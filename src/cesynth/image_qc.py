"""Per-image checks for what real scans bring and the phantom never had.

One row per scan and image (``qc/images/sub-<id>_<modality>.tsv``, gathered into
``qc/images.tsv``), measured on the image as the dataset stores it and on the image on the
native CE-T1 grid inside the brain mask (what the normalisation reads):

* **Stored range and type**: ``stored_dtype``, ``stored_min``, ``stored_max`` (int16 with
  different ranges per site is the rule in published cohorts); ``brain_levels``, the distinct
  intensities inside the brain (histogram equalisation of a coarsely quantised image is coarse).
* **Saturation**: ``saturated_voxels`` and ``saturated_share``, the brain voxels at the image's
  maximum
  (:func:`cesynth.normalise.saturation`). A continuous image holds its maximum in a voxel or a
  few; a CE-T1 clipped at 32767 holds it in every voxel brighter than the clip.
* **Through-plane resolution**: ``stored_voxel_mm`` and ``stored_slice_mm`` (the largest voxel
  size, the slice thickness of a 2D acquisition) from the header.
* **Resampling stripes**: ``slice_hf_ratio`` and ``slice_hf_axis`` (:func:`slice_hf_ratio`): a
  volume upsampled from thick slices, as older BraTS cases are, carries no fresh detail between
  the original slices, whatever its header says.
* **Background and coverage**: ``background_zero_share`` (the share of voxels outside the brain
  mask that are exactly 0: about 1 after skull stripping) and ``brain_coverage`` (the share of
  brain voxels with signal: below 1 where the image's field of view or its own skull stripping
  cuts the brain).

The rows hold measurements only; :func:`flag_table` sets the flags when the rows are gathered,
from the thresholds in config ``qc`` (:class:`Thresholds`), so a changed threshold re-flags the
table without recomputing anything upstream.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from cesynth import qc
from cesynth.io import InputError, check_same_grid, load_nifti
from cesynth.normalise import saturation

STAGE = "images"
"""The QC stage of these rows (``qc/images.tsv``)."""

AXES = ("x", "y", "z")
"""Array axes of an RAS-canonical image, as the table names them."""

MIN_SLICE_VOXELS_SHARE = 0.1
"""Slices whose brain cross-section is under this share of the largest one are left out of the
stripe statistic (a few voxels at the brain's edge say nothing)."""

MIN_SLICES = 8
"""Fewest usable slices for a stripe statistic along an axis; fewer gives NaN."""

STRIPE_QUANTILE = 0.25
"""The quantile over slices of the through-plane / in-plane energy ratio: a volume upsampled by
k has (k - 1)/k of its slices without fresh detail, half or more for any k >= 2."""


@dataclass(frozen=True)
class Thresholds:
    """Where a measurement becomes a flag (config ``qc``; limits inclusive: a value at a limit
    passes).

    Args:
        max_saturated_share: flag ``saturated`` above this share of brain voxels at the maximum
            (and more than one voxel).
        max_slice_mm: flag ``thick_slices`` where the stored voxel size exceeds this (mm).
        min_slice_hf_ratio: flag ``resampled_slices`` below this stripe statistic.
        min_brain_levels: flag ``coarse_levels`` below this many distinct brain intensities.
        min_brain_coverage: flag ``low_brain_coverage`` below this share of brain with signal.
        stripped_background_share: a background at least this share zero counts as skull
            stripped; flag ``background_undeclared`` where that disagrees with
            ``ingest.skull_stripped`` (anatomical images only).
    """

    max_saturated_share: float = 1e-4
    max_slice_mm: float = 3.0
    min_slice_hf_ratio: float = 0.3
    min_brain_levels: int = 128
    min_brain_coverage: float = 0.95
    stripped_background_share: float = 0.95

    @classmethod
    def from_config(cls, settings: Mapping[str, Any] | None) -> Thresholds:
        """From config ``qc`` (absent keys keep their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (settings or {}).items() if k in known})


FLAGS = ("saturated", "thick_slices", "resampled_slices", "coarse_levels", "low_brain_coverage",
         "background_undeclared")
"""The flags :func:`flag_table` sets, in column order."""


# ------------------------------------------------------------------------------ measurements


def slice_hf_ratio(data: np.ndarray, mask: np.ndarray, axis: int) -> float:
    """How much fresh detail adjacent slices along ``axis`` carry, against detail within slices.

    Per slice, the mean squared difference between adjacent slices (through-plane) over the
    mean squared difference between adjacent voxels within the slice (in-plane), inside the
    brain. In a native 3D volume both hold the same noise and anatomy: the ratio is about 1.
    A volume upsampled from thick slices has none between the original slices: nearest
    neighbour copies a thick slice (first differences vanish), linear interpolation puts each
    thin slice on a straight line between two (second differences vanish). The statistic is the
    smaller, over first and second differences, of the lower quartile of the ratio over slices.

    Args:
        data: the image.
        mask: the brain mask, same shape.
        axis: the through-plane axis.

    Returns:
        The statistic (about 1 native; near 0 upsampled by 2 or more); NaN with fewer than
        :data:`MIN_SLICES` usable slices.
    """
    volume, brain = _cropped(np.asarray(data, dtype=np.float64), np.asarray(mask, dtype=bool))
    volume, brain = np.moveaxis(volume, axis, 0), np.moveaxis(brain, axis, 0)
    ratios = [_quantile_ratio(volume, brain, order) for order in (1, 2)]
    ratios = [r for r in ratios if math.isfinite(r)]
    return min(ratios) if ratios else math.nan


def _cropped(volume: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays cut to the brain's bounding box (most of a 1 mm grid is background)."""
    where = np.argwhere(brain)
    if where.size == 0:
        return volume[:0, :0, :0], brain[:0, :0, :0]
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(where.min(0), where.max(0), strict=True))
    return np.where(np.isfinite(volume[box]), volume[box], 0.0), brain[box]


def _differences(volume: np.ndarray, brain: np.ndarray, axis: int, order: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Squared first or second differences along ``axis`` and where all their voxels are brain."""
    def part(start: int, stop: int) -> tuple[slice, ...]:
        cut = slice(start, volume.shape[axis] - stop or None)
        return tuple(cut if a == axis else slice(None) for a in range(volume.ndim))

    if order == 1:
        diff = volume[part(1, 0)] - volume[part(0, 1)]
        valid = brain[part(1, 0)] & brain[part(0, 1)]
    else:
        diff = volume[part(0, 2)] - 2.0 * volume[part(1, 1)] + volume[part(2, 0)]
        valid = brain[part(0, 2)] & brain[part(1, 1)] & brain[part(2, 0)]
    return np.where(valid, diff * diff, 0.0), valid


def _per_slice(energy: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Summed energy and voxel count per slice (axis 0)."""
    return energy.reshape(energy.shape[0], -1).sum(1), valid.reshape(valid.shape[0], -1).sum(1)


def _quantile_ratio(volume: np.ndarray, brain: np.ndarray, order: int) -> float:
    """Lower quartile over slices (axis 0) of through-plane / in-plane energy, one order."""
    if volume.shape[0] <= order:
        return math.nan
    through, through_n = _per_slice(*_differences(volume, brain, 0, order))
    inplane, inplane_n = np.zeros(volume.shape[0]), np.zeros(volume.shape[0])
    for axis in (1, 2):
        energy, count = _per_slice(*_differences(volume, brain, axis, order))
        inplane, inplane_n = inplane + energy, inplane_n + count
    with np.errstate(invalid="ignore", divide="ignore"):
        per_voxel = inplane / inplane_n
    # a first difference spans slices k and k+1; a second difference is centred on slice k+1
    if order == 1:
        reference = 0.5 * (per_voxel[:-1] + per_voxel[1:])
    else:
        reference = per_voxel[1:-1]
    usable = (through_n >= MIN_SLICE_VOXELS_SHARE * max(int(through_n.max()), 1)) & (
        through_n > 0) & np.isfinite(reference) & (reference > 0)
    if int(usable.sum()) < MIN_SLICES:
        return math.nan
    ratio = (through[usable] / through_n[usable]) / reference[usable]
    return float(np.quantile(ratio, STRIPE_QUANTILE))


def stripe_statistic(data: np.ndarray, mask: np.ndarray) -> tuple[float, str]:
    """The smallest :func:`slice_hf_ratio` over the three axes, and that axis (``x``/``y``/``z``;
    ``n/a`` when no axis has enough slices)."""
    values = {name: slice_hf_ratio(data, mask, axis) for axis, name in enumerate(AXES)}
    finite = {name: value for name, value in values.items() if math.isfinite(value)}
    if not finite:
        return math.nan, "n/a"
    axis = min(finite, key=finite.get)
    return finite[axis], axis


def measure_image(stored_path: str | os.PathLike, image_path: str | os.PathLike,
                  mask_path: str | os.PathLike) -> dict[str, Any]:
    """Every measurement of one image (see the module docstring).

    Args:
        stored_path: the image as the dataset stores it (its data type, range, voxel size).
        image_path: the same image on the native CE-T1 grid (registered, or the CE-T1 itself).
        mask_path: the brain mask on the CE-T1 grid.

    Returns:
        The row's measurements, in column order.

    Raises:
        InputError: an unreadable file, an image not on the mask's grid, or an empty mask.
    """
    stored = load_nifti(stored_path)
    image, mask_img = _canonical(load_nifti(image_path)), _canonical(load_nifti(mask_path))
    check_same_grid(image, mask_img, image_path, "the CE-T1 brain mask", hint="register it first")
    mask = np.asanyarray(mask_img.dataobj) > 0
    if not mask.any():
        raise InputError(mask_path, "brain mask is empty")
    data = np.asarray(image.dataobj, dtype=np.float64)
    saturated = saturation(data, mask)
    hf_ratio, hf_axis = stripe_statistic(data, mask)
    brain = data[mask]
    outside = data[~mask]
    return {
        **_stored_metrics(stored),
        "brain_levels": int(np.unique(brain[np.isfinite(brain)]).size),
        "saturation_level": saturated.level,
        "saturated_voxels": saturated.voxels,
        "saturated_share": saturated.share,
        "slice_hf_ratio": hf_ratio,
        "slice_hf_axis": hf_axis,
        "background_zero_share": (float(np.count_nonzero(outside == 0)) / outside.size
                                  if outside.size else math.nan),
        "brain_coverage": float(np.count_nonzero(np.isfinite(brain) & (brain != 0))) / brain.size,
    }


def _stored_metrics(stored: nib.Nifti1Image) -> dict[str, Any]:
    values = np.asanyarray(stored.dataobj)
    values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    zooms = [float(z) for z in stored.header.get_zooms()[:3]]
    return {
        "stored_dtype": str(stored.get_data_dtype()),
        "stored_min": float(values.min()) if values.size else math.nan,
        "stored_max": float(values.max()) if values.size else math.nan,
        "stored_voxel_mm": "x".join(f"{z:.2f}" for z in zooms),
        "stored_slice_mm": max(zooms),
    }


def _canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """RAS canonical, so ``slice_hf_axis`` names the same axis for every image."""
    if img.ndim == 4 and img.shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
    return nib.as_closest_canonical(img)


def write_qc_row(metrics: Mapping[str, Any], modality: str, scan_id: str,
                 out_tsv: str | os.PathLike) -> dict[str, Any]:
    """Write one image's measurements as its one-row table (no flags: :func:`flag_table`).

    Returns:
        The numeric measurements (for MLflow).
    """
    qc.write_row(qc.qc_row(STAGE, scan_id, {"modality": modality, **metrics}, {}), out_tsv)
    return {key: value for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


# ------------------------------------------------------------------------------ flags


ANATOMICAL = ("T1w", "ceT1w", "T2w", "FLAIR")
"""Images whose background tells whether the dataset is skull-stripped (not the ADC: a fitted
map is noise outside the head)."""


def row_flags(row: Mapping[str, Any], thresholds: Thresholds, skull_stripped: bool
              ) -> dict[str, bool]:
    """The flags of one gathered row (values as read back from TSV; a missing value sets none).

    Args:
        row: one row of the gathered table.
        thresholds: the limits.
        skull_stripped: what ``ingest.skull_stripped`` declares.

    Returns:
        Flag name -> set, for every name of :data:`FLAGS`.
    """
    def number(name: str) -> float:
        try:
            return float(row.get(name))
        except (TypeError, ValueError):
            return math.nan

    background = number("background_zero_share")
    looks_stripped = background >= thresholds.stripped_background_share
    return {
        "saturated": (number("saturated_voxels") > 1
                      and number("saturated_share") > thresholds.max_saturated_share),
        "thick_slices": number("stored_slice_mm") > thresholds.max_slice_mm,
        "resampled_slices": number("slice_hf_ratio") < thresholds.min_slice_hf_ratio,
        "coarse_levels": number("brain_levels") < thresholds.min_brain_levels,
        "low_brain_coverage": number("brain_coverage") < thresholds.min_brain_coverage,
        "background_undeclared": (str(row.get("modality")) in ANATOMICAL
                                  and math.isfinite(background)
                                  and looks_stripped != bool(skull_stripped)),
    }


def flag_table(table: pd.DataFrame, thresholds: Thresholds, skull_stripped: bool
               ) -> pd.DataFrame:
    """The gathered rows with a column per flag and ``flagged`` (any flag set) recomputed.

    Args:
        table: the gathered image rows.
        thresholds: the limits.
        skull_stripped: what ``ingest.skull_stripped`` declares.

    Returns:
        A copy with the flag columns (:data:`FLAGS`) before ``flagged``, which comes last.
    """
    flagged = table.drop(columns=[c for c in (*FLAGS, "flagged") if c in table.columns])
    flags = pd.DataFrame([row_flags(row, thresholds, skull_stripped)
                          for row in table.to_dict("records")], columns=list(FLAGS),
                         index=table.index, dtype=bool)
    flagged = pd.concat([flagged, flags], axis=1)
    flagged["flagged"] = flags.any(axis=1)
    return flagged


def flagger(thresholds: Mapping[str, Any] | Thresholds, skull_stripped: bool
            ) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """What :func:`cesynth.qc.gather_tables` applies to the gathered image rows: :func:`flag_table`
    with config ``qc`` (or :class:`Thresholds`) and ``ingest.skull_stripped``."""
    if not isinstance(thresholds, Thresholds):
        thresholds = Thresholds.from_config(thresholds)
    return lambda table: flag_table(table, thresholds, skull_stripped)


__all__ = ["ANATOMICAL", "AXES", "FLAGS", "STAGE", "Thresholds", "flag_table", "flagger",
           "measure_image", "row_flags", "slice_hf_ratio", "stripe_statistic", "write_qc_row"]
