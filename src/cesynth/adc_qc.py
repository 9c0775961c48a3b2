"""The QC row of the ADC jobs (fitted or given map), with the error against a phantom's true ADC.

A fitted map's row (:class:`cesynth.adc.AdcStats`) says it was fitted from the DWI
(:data:`FITTED_SOURCE`) and from which shells; a given map's (:class:`cesynth.adc_maps.AdcMapStats`)
carries its source and unit conversion. With the phantom's true ADC the row adds the errors of
:func:`adc_error_vs_truth`. :func:`shells_used` reads the rows of a model's training subjects
back for its preprocessing record.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from cesynth.adc import AdcStats, shell_text
from cesynth.adc_maps import AdcMapStats
from cesynth.io import InputError, load_nifti, read_tsv

PathLike = str | os.PathLike


def adc_error_vs_truth(
    adc_path: PathLike, true_adc_path: PathLike, mask_path: PathLike | None = None
) -> dict:
    """Errors of a fitted ADC map against the true (phantom) one, for the QC table.

    Args:
        adc_path: fitted ADC NIfTI (mm2/s).
        true_adc_path: true ADC NIfTI on the same grid (mm2/s).
        mask_path: optional mask on that grid; default the voxels with true ADC > 0.

    Returns:
        ``{"median_abs_error", "mean_abs_error", "median_rel_error", "n_voxels"}``: errors in
        mm2/s; the relative error is ``|fit - true| / true`` over voxels with true ADC > 0.
        Errors are NaN when the region is empty.
    """
    fit = load_nifti(adc_path).get_fdata(dtype=np.float32)
    truth = load_nifti(true_adc_path).get_fdata(dtype=np.float32)
    if fit.shape != truth.shape:
        raise InputError(adc_path, f"shape {fit.shape} differs from the true ADC's {truth.shape}")
    if mask_path is not None:
        mask_img = load_nifti(mask_path)
        if mask_img.shape[:3] != fit.shape[:3]:
            raise InputError(mask_path, f"mask shape {mask_img.shape} differs from {fit.shape}")
        region = np.asanyarray(mask_img.dataobj).reshape(fit.shape) != 0
    else:
        region = truth > 0
    err = np.abs(fit[region].astype(np.float64) - truth[region])
    true_vals = truth[region].astype(np.float64)
    positive = true_vals > 0
    rel = err[positive] / true_vals[positive]
    return {
        "median_abs_error": float(np.median(err)) if err.size else float("nan"),
        "mean_abs_error": float(np.mean(err)) if err.size else float("nan"),
        "median_rel_error": float(np.median(rel)) if rel.size else float("nan"),
        "n_voxels": int(err.size),
    }


#: The columns that say where a fitted map came from (a given map's stats carry their own).
FITTED_SOURCE = {"source": "fitted from DWI", "unit_conversion": "none (fitted in mm2/s)"}


def write_qc_row(
    stats: AdcStats | AdcMapStats,
    scan_id: str,
    out_tsv: PathLike,
    *,
    adc_path: PathLike | None = None,
    true_adc_path: PathLike | None = None,
) -> dict[str, Any]:
    """Write one ADC job's QC row; with the phantom's true ADC, add the errors against it.

    Args:
        stats: the fit's :class:`AdcStats` (the row says it was fitted from the DWI, and from
            which shells: ``b_values`` as ``0/500/1000``) or a given map's
            :class:`AdcMapStats`.
        scan_id: the subject (and session) label.
        out_tsv: the one-row QC table to write.
        adc_path: the ADC map the job wrote (needed with ``true_adc_path``).
        true_adc_path: the phantom's true ADC on the same grid, if known.

    Returns:
        The metrics of the row (for MLflow): the stats, and ``truth_*`` errors
        (:func:`adc_error_vs_truth`) when the truth is given.

    Raises:
        ValueError: ``true_adc_path`` without ``adc_path``.
    """
    from cesynth import qc

    metrics = stats.to_dict() if isinstance(stats, AdcMapStats) else {
        **FITTED_SOURCE, **stats.to_dict(), "b_values": shell_text(stats.b_values)}
    if true_adc_path is not None:
        if adc_path is None:
            raise ValueError("the error against the true ADC needs the fitted map (adc_path)")
        errors = adc_error_vs_truth(adc_path, true_adc_path)
        metrics.update({f"truth_{key}": value for key, value in errors.items()})
    qc.write_row(qc.qc_row("adc", scan_id, metrics, {}), out_tsv)
    return metrics


def shells_used(qc_rows: Sequence[PathLike]) -> dict[str, int]:
    """How the ADC of a set of subjects was made, from their ADC QC rows (:func:`write_qc_row`).

    Args:
        qc_rows: one-row ADC QC tables, one per subject.

    Returns:
        The shells a fitted map was fitted from (``0/500/1000``, ``0/1000``) or a given map's
        source (``given ADC map``) -> the number of subjects, in order of first appearance.

    Raises:
        InputError: on a table that is not one ADC QC row.
    """
    counts: Counter[str] = Counter()
    for path in qc_rows:
        table = read_tsv(path)
        if len(table) != 1 or "source" not in table.columns:
            raise InputError(path, "not one ADC QC row (expected one row with a source column)")
        row = table.iloc[0]
        if row["source"] != FITTED_SOURCE["source"]:
            counts[str(row["source"])] += 1
            continue
        counts[_row_shells(str(row["b_values"]))] += 1
    return dict(counts)


def _row_shells(text: str) -> str:
    """``0/1000`` from a row's ``b_values``: ``0/1000``, or ``(0.0, 1000.0)`` in a row written
    before the shells were spelled so."""
    return shell_text([float(b) for b in re.findall(r"\d+(?:\.\d*)?", text)])


__all__ = ["FITTED_SOURCE", "adc_error_vs_truth", "shells_used", "write_qc_row"]
