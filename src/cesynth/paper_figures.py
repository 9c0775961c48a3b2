"""The paper's figures from evaluation results: Figs. 7, 9, 10 and the Fig. 4-like synthesis panel.

The rows each figure shows are selected from the model catalog as :mod:`cesynth.paper` describes
(its module docstring holds the inputs' contract); :func:`largest_region_slice` picks the panel's
axial cut.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cesynth.io import InputError, atomic_path, load_nifti
from cesynth.paper import (
    FULL_VARIANT,
    VARIANT_ORDER,
    check_inputs,
    differs_only_in,
    modality_key,
    model_score,
    reference_row,
    score_summary,
    with_reference,
)

FIGURE_TEXT = {
    "fig7_loss_weights": ("Fig. 7: Set A brain PSNR against Set B tumor PSNR per loss-weight "
                          "pair (l1, l3)", "only in l1 and l3"),
    "fig9_delta": ("Fig. 9: PSNR against the local-loss threshold delta", "only in delta"),
    "fig10_missing_inputs": ("Fig. 10: missing inputs (zeroed or synthesized at test time) and "
                             "models trained on fewer inputs", "only in variant or modalities"),
}
"""Caption of each figure and what its rows differ in from the reference."""
ERROR_VMAX = 0.5
"""Top of the colour scale of absolute error maps (intensities are in [0, 1])."""
INPUT_PANELS = (("T1w", "T1"), ("T2w", "T2"), ("adc", "ADC"))
"""Keys and column titles of the inputs in :func:`synthesis_panel`."""
TRUTH_KEY = "truth"
"""Key of the real CE-T1 in :func:`synthesis_panel`."""

ImageSource = str | os.PathLike | np.ndarray


# ---------------------------------------------------------------- figures




def _scored(per_subject: pd.DataFrame, rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``rows`` with ``<key>_mean`` and ``<key>_sd`` columns added (sd 0 where undefined)."""
    summary = score_summary(per_subject)
    frame = rows.copy()
    for key in keys:
        scores = [model_score(summary, key, model) for model in frame["model"]]
        frame[f"{key}_mean"] = [s[0] for s in scores]
        frame[f"{key}_sd"] = [0.0 if math.isnan(s[1]) else s[1] for s in scores]
    return frame


def _has_points(frame: pd.DataFrame, keys: Sequence[str], every: bool = False) -> bool:
    """Some row (besides the reference) exists and some row has finite means for the keys."""
    if len(frame) < 2:
        return False
    finite = np.isfinite(frame[[f"{k}_mean" for k in keys]].to_numpy(float))
    return bool((finite.all(axis=1) if every else finite.any(axis=1)).any())


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return Path(path)


def plot_loss_weights(per_subject: pd.DataFrame, catalog: pd.DataFrame,
                      out_png: str | os.PathLike) -> Path | None:
    """Fig. 7: Set A brain PSNR against Set B tumor PSNR, one point per (l1, l3) pair.

    Rows: those differing from the reference only in ``l1`` and ``l3``, and the reference
    (a star). Error bars: sd over subjects.

    Args:
        per_subject: the per-subject table.
        catalog: the model catalog.
        out_png: the PNG to write (atomically).

    Returns:
        ``out_png``, or None (nothing written) when no such row has both scores.
    """
    per_subject, catalog = check_inputs(per_subject, catalog)
    keys = ("A_brain_psnr", "B_tumor_psnr")
    frame = _scored(per_subject, with_reference(catalog, differs_only_in(catalog, ("l1", "l3"))),
                    keys)
    if not _has_points(frame, keys, every=True):
        return None
    figure = _new_figure((6.4, 5.0))
    axes = figure.subplots()
    for row in frame.to_dict("records"):
        label = f"({_weight(row['l1'])}, {_weight(row['l3'])})" + (
            " final" if row["reference"] else "")
        axes.errorbar(row["A_brain_psnr_mean"], row["B_tumor_psnr_mean"],
                      xerr=row["A_brain_psnr_sd"], yerr=row["B_tumor_psnr_sd"],
                      fmt="*" if row["reference"] else "o", markersize=10 if row["reference"]
                      else 6, capsize=3)
        axes.annotate(label, (row["A_brain_psnr_mean"], row["B_tumor_psnr_mean"]),
                      textcoords="offset points", xytext=(6, 6), fontsize=9)
    axes.set(xlabel="Set A brain PSNR (dB)", ylabel="Set B tumor PSNR (dB)",
             title="Local-loss weights (l1, l3): mean ± sd over subjects")
    return _save(figure, out_png)


def _weight(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def plot_delta(per_subject: pd.DataFrame, catalog: pd.DataFrame,
               out_png: str | os.PathLike) -> Path | None:
    """Fig. 9: Set A brain PSNR and Set B tumor PSNR against ``delta`` (log axis).

    Rows: those differing from the reference only in ``delta``, and the reference (dotted line
    at its delta). Rows with delta <= 0 cannot sit on a log axis and are left out.

    Args:
        per_subject: the per-subject table.
        catalog: the model catalog.
        out_png: the PNG to write (atomically).

    Returns:
        ``out_png``, or None (nothing written) when there is no such row with a score.
    """
    per_subject, catalog = check_inputs(per_subject, catalog)
    keys = ("A_brain_psnr", "B_tumor_psnr")
    rows = with_reference(catalog, differs_only_in(catalog, ("delta",)))
    rows = rows[pd.to_numeric(rows["delta"], errors="coerce") > 0]
    frame = _scored(per_subject, rows, keys)
    if not _has_points(frame, keys):
        return None
    frame = frame.assign(delta=frame["delta"].astype(float)).sort_values("delta")
    reference_delta = frame.loc[frame["reference"], "delta"].tolist()
    figure = _new_figure((10.0, 4.0))
    for axes, key, title in zip(figure.subplots(1, 2), keys, ("Set A brain", "Set B tumor"),
                                strict=True):
        axes.errorbar(frame["delta"], frame[f"{key}_mean"], yerr=frame[f"{key}_sd"], fmt="o-",
                      capsize=3)
        for value in reference_delta:
            axes.axvline(value, linestyle=":", color="grey", label="final model")
        axes.set(xscale="log", xlabel="delta (threshold of the enhancement mask M)",
                 ylabel="PSNR (dB)", title=title)
        if reference_delta:
            axes.legend()
    return _save(figure, out_png)


def plot_missing_inputs(per_subject: pd.DataFrame, catalog: pd.DataFrame,
                        out_png: str | os.PathLike) -> Path | None:
    """Fig. 10: Set A brain PSNR and Set B tumor PSNR with inputs missing, as grouped bars.

    Groups: the reference experiment's other variants (:data:`cesynth.paper.VARIANT_ORDER`),
    then models that differ from the reference only in ``modalities`` (trained on fewer
    inputs), then the reference. Error bars: sd over subjects.

    Args:
        per_subject: the per-subject table.
        catalog: the model catalog.
        out_png: the PNG to write (atomically).

    Returns:
        ``out_png``, or None (nothing written) when there is no such row with a score.
    """
    per_subject, catalog = check_inputs(per_subject, catalog)
    keys = ("A_brain_psnr", "B_tumor_psnr")
    frame = _scored(per_subject, _missing_input_rows(catalog), keys)
    if not _has_points(frame, keys):
        return None
    figure = _new_figure((max(6.0, 1.3 * len(frame) + 2), 4.5))
    axes = figure.subplots()
    x = np.arange(len(frame))
    for offset, key, label in ((-0.2, keys[0], "Set A brain"), (0.2, keys[1], "Set B tumor")):
        axes.bar(x + offset, frame[f"{key}_mean"].fillna(0.0), width=0.4,
                 yerr=frame[f"{key}_sd"], capsize=3, label=label)
    axes.set_xticks(x, [_missing_input_label(row) for row in frame.to_dict("records")],
                    rotation=30, ha="right")
    axes.set(ylabel="PSNR (dB)", title="Missing inputs: mean ± sd over subjects")
    axes.legend()
    return _save(figure, out_png)


def _missing_input_rows(catalog: pd.DataFrame) -> pd.DataFrame:
    reference = reference_row(catalog)
    same = catalog[(catalog["experiment"] == reference["experiment"]) & ~catalog["reference"]]
    order = [VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER)
             for v in same["variant"]]
    same = same.iloc[np.argsort(order, kind="stable")]
    fewer = differs_only_in(catalog, ("modalities",))
    fewer = fewer.iloc[np.argsort([len(modality_key(m).split("+")) for m in fewer["modalities"]],
                                  kind="stable")]
    fewer = fewer[~fewer["model"].isin(same["model"])]
    return pd.concat([same, fewer, catalog[catalog["reference"]]])


def _missing_input_label(row: Mapping[str, Any]) -> str:
    if row["reference"]:
        return f"final ({row['modalities']})"
    if row["variant"] != FULL_VARIANT:
        return str(row["variant"])
    return f"trained on {row['modalities']}"


FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame, Path], Path | None]] = {
    "fig7_loss_weights": plot_loss_weights,
    "fig9_delta": plot_delta,
    "fig10_missing_inputs": plot_missing_inputs,
}
"""The figures :func:`cesynth.paper_report.write_paper_outputs` draws, by file stem."""


# ---------------------------------------------------------------- Fig. 4-like panel


def synthesis_panel(images: Mapping[str, Mapping[str, ImageSource]],
                    slice_index: int | Mapping[str, int] | None,
                    out_png: str | os.PathLike, *, title: str | None = None) -> Path:
    """Fig. 4-like panel: inputs, the real CE-T1, each model's synthesis and its error map.

    Columns: T1, T2, ADC, truth, every model's synthetic CE-T1, then every model's absolute
    error ``|synthetic - truth|``; one row per subject. Images are shown in grey on [0, 1] (the
    model grid's normalised intensities), error maps on [0, :data:`ERROR_VMAX`] with a colour
    bar; an image a subject lacks is an empty panel marked "absent".

    Args:
        images: subject label -> {key -> NIfTI path or array}. Keys: ``T1w``, ``T2w``, ``adc``
            (:data:`INPUT_PANELS`), ``truth`` (:data:`TRUTH_KEY`, required) and one key per
            model (its column title), in the order the columns should have. Volumes are
            ``(x, y, z)`` on one grid (axial slices along the last axis); a 2D array is taken
            as the slice itself.
        slice_index: the axial slice, one for all subjects or per subject; None: the middle
            slice of each subject's truth.
        out_png: the PNG to write (atomically).
        title: figure title (keep it free of patient identifiers).

    Returns:
        ``out_png``.

    Raises:
        InputError: no subjects, a subject without ``truth``, a slice out of range, or images
            of a subject that differ in shape.
    """
    if not images:
        raise InputError(out_png, "no subjects to draw")
    inputs = [key for key, _ in INPUT_PANELS]
    models = list(dict.fromkeys(key for subject in images.values() for key in subject
                                if key not in (*inputs, TRUTH_KEY)))
    titles = [label for _, label in INPUT_PANELS] + ["truth (CE-T1)"] + models
    titles += [f"|{model} - truth|" for model in models]
    rows = {subject: _panel_row(subject, sources, _subject_slice(slice_index, subject), models)
            for subject, sources in images.items()}
    figure = _image_grid(rows, titles, first_error=4 + len(models), title=title)
    return _save(figure, out_png)


def largest_region_slice(mask: ImageSource) -> int:
    """The axial slice (last axis) with the most voxels of a mask: the panel's cut.

    Args:
        mask: a NIfTI path or an ``(x, y, z)`` array (non-zero = inside).

    Returns:
        The slice index; the middle slice when the mask is empty.
    """
    volume = _load(mask) != 0
    per_slice = volume.reshape(-1, volume.shape[-1]).sum(axis=0)
    return int(np.argmax(per_slice)) if per_slice.any() else volume.shape[-1] // 2


def _subject_slice(slice_index: int | Mapping[str, int] | None, subject: str) -> int | None:
    if isinstance(slice_index, Mapping):
        return slice_index.get(subject)
    return slice_index


def _panel_row(subject: str, sources: Mapping[str, ImageSource], index: int | None,
               models: Sequence[str]) -> list[np.ndarray | None]:
    if TRUTH_KEY not in sources:
        raise InputError(subject, f"no '{TRUTH_KEY}' image for the synthesis panel")
    truth_volume = _load(sources[TRUTH_KEY])
    index = truth_volume.shape[-1] // 2 if index is None else index
    truth = _slice(truth_volume, index, subject)
    panels = [_slice(_load(sources[key]), index, subject) if key in sources else None
              for key, _ in INPUT_PANELS]
    synthetic = [_slice(_load(sources[m]), index, subject) if m in sources else None
                 for m in models]
    for panel in (*panels, *synthetic):
        if panel is not None and panel.shape != truth.shape:
            raise InputError(subject, f"slice shape {panel.shape} differs from the truth's "
                                      f"{truth.shape}")
    errors = [None if s is None else np.abs(s - truth) for s in synthetic]
    return [*panels, truth, *synthetic, *errors]


def _load(source: ImageSource) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source.astype(np.float32)
    return np.asarray(load_nifti(source).get_fdata(dtype=np.float32))


def _slice(volume: np.ndarray, index: int, who: str) -> np.ndarray:
    if volume.ndim == 2:
        return volume
    if volume.ndim != 3:
        raise InputError(who, f"expected a 3D volume or a 2D slice, got shape {volume.shape}")
    if not 0 <= index < volume.shape[-1]:
        raise InputError(who, f"slice {index} is outside 0..{volume.shape[-1] - 1}")
    return volume[:, :, index]


def prepare_panel(ax: Any, title: str | None, present: bool, fontsize: int = 9) -> bool:
    """An image axis without ticks, titled on the first row; "absent" where there is no image.

    Returns:
        Whether an image is to be drawn on it.
    """
    ax.set_xticks([]), ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=fontsize)
    if not present:
        ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes)
    return present


def _image_grid(rows: Mapping[str, Sequence[np.ndarray | None]], titles: Sequence[str],
                first_error: int, title: str | None = None) -> Figure:
    """One row of images per subject, titles on the first row, subject labels on the left.

    The layout of ``docs/make_figures.py``'s ``image_grid`` on a bare :class:`Figure`; columns
    from ``first_error`` on are error maps (own colour scale and a colour bar).
    """
    figure = _new_figure((2.2 * len(titles), 2.4 * len(rows) + 0.4))
    axes = figure.subplots(len(rows), len(titles), squeeze=False)
    error_image = None
    for r, (subject, panels) in enumerate(rows.items()):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if not prepare_panel(ax, titles[c] if r == 0 else None, panel is not None):
                continue
            error = c >= first_error
            # rot90: anterior up, as the README's figures show slices
            shown = ax.imshow(np.rot90(panel), cmap="magma" if error else "gray", vmin=0.0,
                              vmax=ERROR_VMAX if error else 1.0, interpolation="nearest")
            error_image = shown if error else error_image
        axes[r, 0].set_ylabel(subject, fontsize=10)
    if error_image is not None:
        figure.colorbar(error_image, ax=axes[:, first_error:].ravel().tolist(), shrink=0.8,
                        label="|synthetic - real|")
    if title:
        figure.suptitle(title)
    return figure


__all__ = [
    "ERROR_VMAX", "FIGURES", "FIGURE_TEXT", "INPUT_PANELS", "TRUTH_KEY", "ImageSource",
    "largest_region_slice", "plot_delta", "plot_loss_weights", "plot_missing_inputs",
    "prepare_panel", "synthesis_panel",
]
