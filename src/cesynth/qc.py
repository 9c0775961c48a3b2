"""Quality control: montage figures, per-stage QC tables and plausibility flags.

Snakemake runs subjects in parallel, so each job writes its own one-row table
(``qc/<stage>/<scan_id>.tsv``, see :func:`stage_row_path`) and a gathering job concatenates them
into ``qc/<stage>.tsv`` with :func:`gather_tables`. Figures carry modality labels only: no file
names, header fields or other patient identifiers. Figures are drawn on a bare
:class:`~matplotlib.figure.Figure` (Agg renderer, no pyplot), so no display and no global
backend state are involved.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cesynth.io import InputError, atomic_path, check_same_grid, load_nifti, read_tsv, write_tsv

BRAIN_VOLUME_LIMITS_ML = (800.0, 2000.0)
"""Plausible adult brain volume (ml); outside it the brain mask is flagged."""

ADC_MEDIAN_LIMITS_MM2_S = (0.6e-3, 1.2e-3)
"""Plausible median ADC inside the brain (mm2/s); outside it the ADC map is flagged."""

ID_COLUMNS = ("scan_id", "stage")


def plausibility_flags(
    brain_volume_ml: float | None = None,
    adc_median_mm2_s: float | None = None,
    *,
    volume_limits_ml: tuple[float, float] = BRAIN_VOLUME_LIMITS_ML,
    adc_limits_mm2_s: tuple[float, float] = ADC_MEDIAN_LIMITS_MM2_S,
) -> dict[str, bool]:
    """Flag values outside their plausible range (limits inclusive: a value at a limit passes).

    Args:
        brain_volume_ml: brain-mask volume, or None to skip the check.
        adc_median_mm2_s: median ADC inside the brain, or None to skip the check.
        volume_limits_ml: ``(low, high)`` plausible brain volume.
        adc_limits_mm2_s: ``(low, high)`` plausible brain ADC median.

    Returns:
        ``{"brain_volume_implausible": bool, "adc_median_implausible": bool}``, with a key only
        for each value given; a non-finite value is flagged.
    """
    flags: dict[str, bool] = {}
    if brain_volume_ml is not None:
        flags["brain_volume_implausible"] = _outside(brain_volume_ml, volume_limits_ml)
    if adc_median_mm2_s is not None:
        flags["adc_median_implausible"] = _outside(adc_median_mm2_s, adc_limits_mm2_s)
    return flags


def _outside(value: float, limits: tuple[float, float]) -> bool:
    low, high = limits
    return not (math.isfinite(value) and low <= value <= high)


def brain_volume_ml(mask_img: nib.Nifti1Image) -> float:
    """Volume of the non-zero voxels of a mask, in ml.

    Args:
        mask_img: the brain mask.

    Returns:
        Voxel count times voxel volume (mm3), divided by 1000.
    """
    voxel_mm3 = abs(float(np.linalg.det(mask_img.affine[:3, :3])))
    return float(np.count_nonzero(np.asanyarray(mask_img.dataobj))) * voxel_mm3 / 1000.0


def qc_row(
    stage: str, scan_id: str, metrics: Mapping[str, Any], flags: Mapping[str, bool]
) -> dict[str, Any]:
    """One QC table row: identifiers, metrics, flags and ``flagged`` (any flag set).

    Args:
        stage: the pipeline stage (``adc``, ``registration``, ``brainmask``, ``normalise``, ...).
        scan_id: the subject (and session) label.
        metrics: numeric or text measurements, one column each.
        flags: booleans, one column each (``True`` = needs a look).

    Returns:
        The row as an ordered dict.

    Raises:
        ValueError: a metric or flag name clashes with another column.
    """
    columns = [*ID_COLUMNS, *metrics, *flags, "flagged"]
    if len(set(columns)) != len(columns):
        raise ValueError(f"duplicate QC column names in {columns}")
    return {
        "scan_id": str(scan_id), "stage": str(stage), **dict(metrics),
        **{name: bool(value) for name, value in flags.items()},
        "flagged": any(bool(v) for v in flags.values()),
    }


def write_row(row: Mapping[str, Any], out_tsv: str | os.PathLike) -> Path:
    """Write one QC row as a one-row TSV (atomically), e.g. at :func:`stage_row_path`.

    Args:
        row: a row from :func:`qc_row`.
        out_tsv: output path.

    Returns:
        The output path.
    """
    return write_tsv(pd.DataFrame([dict(row)]), out_tsv)


def stage_row_path(qc_dir: str | os.PathLike, stage: str, scan_id: str) -> Path:
    """Path of one job's row: ``<qc_dir>/<stage>/<scan_id>.tsv``."""
    return Path(qc_dir) / stage / f"{scan_id}.tsv"


def stage_table_path(qc_dir: str | os.PathLike, stage: str) -> Path:
    """Path of a stage's gathered table: ``<qc_dir>/<stage>.tsv``."""
    return Path(qc_dir) / f"{stage}.tsv"


def count_flagged(table: pd.DataFrame) -> int:
    """Rows of a gathered QC table flagged for review (0 for a stage no scan needed)."""
    if "flagged" not in table.columns:
        return 0
    return int(table["flagged"].astype(str).str.lower().eq("true").sum())


def gather_tables(paths: Iterable[str | os.PathLike], out_tsv: str | os.PathLike,
                  flag: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Concatenate per-job QC tables into one, sorted by ``scan_id`` (then ``stage``).

    Columns are the union over the inputs, in first-seen order; missing cells become ``n/a``.

    Args:
        paths: the per-job TSVs.
        out_tsv: the aggregate TSV to write (atomically).
        flag: sets flags on the gathered rows before they are written (thresholds applied at
            gathering, e.g. :func:`cesynth.image_qc.flag_table`).

    Returns:
        The aggregate table (values as strings, as read back from TSV).

    Raises:
        InputError: an input table is missing or lacks a ``scan_id`` column.
    """
    tables = []
    for path in paths:
        if not Path(path).is_file():
            raise InputError(path, "QC table not found")
        table = read_tsv(path)
        if "scan_id" not in table.columns:
            raise InputError(path, "QC table has no scan_id column")
        tables.append(table)
    if tables:
        gathered = pd.concat(tables, ignore_index=True, sort=False)
        keys = [c for c in ID_COLUMNS if c in gathered.columns]
        gathered = gathered.sort_values(keys, kind="stable").reset_index(drop=True)
        if flag is not None:
            gathered = flag(gathered)
    else:
        gathered = pd.DataFrame(columns=list(ID_COLUMNS))
    write_tsv(gathered, out_tsv)
    return gathered


def montage_png(
    reference_path: str | os.PathLike,
    images: Mapping[str, str | os.PathLike],
    mask_path: str | os.PathLike,
    out_png: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Axial and coronal mid-brain slices of the CE-T1 and each registered modality, mask outlined.

    Rows are orientations (axial, coronal), columns are CE-T1 then ``images`` in the given order.
    Slices cross the mask's centroid; each panel is windowed to the 1-99th in-mask percentiles;
    display is neurological (patient right on the right).

    Args:
        reference_path: the CE-T1 (native grid).
        images: ``label -> path`` of modalities on the CE-T1 grid (e.g. registered T1w, T2w, ADC).
        mask_path: the brain mask on the CE-T1 grid.
        out_png: the PNG to write (atomically).
        title: figure title (keep it free of patient identifiers).

    Returns:
        The output path.

    Raises:
        InputError: a file is unreadable, not 3D, or not on the CE-T1 grid; or the mask is empty.
    """
    reference = _canonical(load_nifti(reference_path), reference_path)
    mask_img = _canonical(load_nifti(mask_path), mask_path)
    check_same_grid(mask_img, reference, mask_path, "the CE-T1", hint="register it first")
    mask = np.asanyarray(mask_img.dataobj) > 0
    if not mask.any():
        raise InputError(mask_path, "brain mask is empty")
    panels = {"CE-T1": np.asanyarray(reference.dataobj, dtype=np.float32)}
    for label, path in images.items():
        img = _canonical(load_nifti(path), path)
        check_same_grid(img, reference, path, "the CE-T1", hint="register it first")
        panels[label] = np.asanyarray(img.dataobj, dtype=np.float32)

    figure = _montage_figure(panels, mask, reference.header.get_zooms()[:3], title)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=100, facecolor="black")
    return Path(out_png)


def _montage_figure(
    panels: Mapping[str, np.ndarray], mask: np.ndarray, zooms: tuple[float, ...],
    title: str | None,
) -> Figure:
    """Build the 2 x N figure (axial and coronal rows) without pyplot's global state."""
    centre = [int(round(c)) for c in np.argwhere(mask).mean(axis=0)]
    views = {  # name -> (slicer, aspect = row voxel size / column voxel size)
        "axial": ((slice(None), slice(None), centre[2]), zooms[1] / zooms[0]),
        "coronal": ((slice(None), centre[1], slice(None)), zooms[2] / zooms[0]),
    }
    figure = Figure(figsize=(2.6 * len(panels), 5.6), facecolor="black")
    axes = figure.subplots(len(views), len(panels), squeeze=False)
    for row, (view, (slicer, aspect)) in enumerate(views.items()):
        for col, (label, data) in enumerate(panels.items()):
            low, high = np.percentile(data[mask & np.isfinite(data)], [1.0, 99.0])
            ax = axes[row, col]
            # transpose + origin="lower": anterior/superior up, patient right on the right
            ax.imshow(data[slicer].T, cmap="gray", origin="lower", vmin=low,
                      vmax=high if high > low else low + 1.0, aspect=aspect,
                      interpolation="nearest")
            ax.contour(mask[slicer].T.astype(float), levels=[0.5], colors="red",
                       linewidths=0.6, origin="lower")
            ax.set_title(f"{label} ({view})", color="white", fontsize=9)
            ax.set_axis_off()
    figure.text(0.01, 0.01, "L | R (neurological); red: brain mask", color="white", fontsize=7)
    if title:
        figure.suptitle(title, color="white")
    return figure


def _canonical(img: nib.Nifti1Image, who: str | os.PathLike) -> nib.Nifti1Image:
    """RAS-canonical 3D image (a trailing singleton 4th axis dropped)."""
    if img.ndim == 4 and img.shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
    if img.ndim != 3:
        raise InputError(who, f"expected a 3D image, got shape {img.shape}")
    return nib.as_closest_canonical(img)

