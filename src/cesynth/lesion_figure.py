"""The figure of lesion sensitivity against lesion size, one line per model and a panel per set.

It reads the pooled table :func:`cesynth.evaluation_tables.lesion_sensitivity_by_size` writes
(``eval/lesion_sensitivity.tsv``): the volume tertiles are drawn as lines at their median
equivalent diameter, the classes below and from :data:`cesynth.enhancement.SMALL_LESION_MM` as
squares, each with its bootstrap interval over subjects.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cesynth.enhancement import FOUND_FRACTION, SMALL_LESION_MM
from cesynth.io import atomic_path

TITLE = ("Lesion sensitivity against lesion size "
         f"(found: > {FOUND_FRACTION:.0%} of its enhancing voxels called)")
"""The figure's title."""


def plot_lesion_sensitivity(by_size_path: str | os.PathLike,
                            out_png: str | os.PathLike) -> Path:
    """Draw lesion sensitivity against equivalent diameter per model and set.

    Args:
        by_size_path: ``eval/lesion_sensitivity.tsv``.
        out_png: the PNG to write (a note in the figure when there are no scored lesions).

    Returns:
        ``out_png``.
    """
    table = pd.read_csv(by_size_path, sep="\t", na_values=["n/a"],
                        dtype={"set": str, "model": str, "size_class": str})
    sets = sorted(table["set"].unique()) if not table.empty else []
    figure = Figure(figsize=(5.5 * max(len(sets), 1), 4.5))
    FigureCanvasAgg(figure)
    if not sets:
        axes = figure.add_subplot(1, 1, 1)
        axes.text(0.5, 0.5, "no scored enhancing lesions", ha="center", va="center")
        axes.set_axis_off()
    for i, set_name in enumerate(sets):
        axes = figure.add_subplot(1, len(sets), i + 1)
        _draw_set(axes, table[table["set"] == set_name], set_name)
    figure.suptitle(TITLE, fontsize=10)
    figure.tight_layout()
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return Path(out_png)


def _draw_set(axes, rows: pd.DataFrame, set_name: str) -> None:
    """One panel: a line per model over the tertiles, squares for the diameter classes."""
    for j, (model, group) in enumerate(rows.groupby("model", sort=True)):
        colour = f"C{j % 10}"
        tertiles = group[group["size_class"].str.startswith("tertile")]
        by_diameter = group[~group["size_class"].str.startswith("tertile")]
        for part, style in ((tertiles, "o-"), (by_diameter, "s")):
            part = part.sort_values("median_diameter_mm")
            axes.errorbar(part["median_diameter_mm"], part["sensitivity"],
                          yerr=_error_bars(part), fmt=style, color=colour, capsize=3,
                          label=model if style == "o-" else None)
    axes.axvline(SMALL_LESION_MM, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("lesion equivalent diameter (mm; median of the class)")
    axes.set_ylabel("lesion sensitivity")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title(f"Set {set_name}")
    axes.legend(fontsize=7)


def _error_bars(part: pd.DataFrame) -> np.ndarray:
    """Distances from each sensitivity to its interval's ends (0 where there is none)."""
    low = [s - lo if not math.isnan(lo) else 0.0
           for s, lo in zip(part["sensitivity"], part["ci_low"], strict=True)]
    high = [hi - s if not math.isnan(hi) else 0.0
            for s, hi in zip(part["sensitivity"], part["ci_high"], strict=True)]
    return np.clip(np.array([low, high], dtype=float), 0.0, None)


__all__ = ["TITLE", "plot_lesion_sensitivity"]
