"""Zoomed lesion panels: does a model draw the enhancing rim, or paint the whole lesion?

One row per lesion, cropped around it on the axial slice through its centre: T1, T2, ADC, the
real CE-T1 and each model's synthetic CE-T1, all on the normalised [0, 1] scale, with the
lesion's enhancing part outlined in the first panel. Lesions of every type are drawn (up to
:data:`LESIONS_PER_TYPE` each), so a rim-enhancing, a solid, a non-enhancing lesion and a T2
abnormality sit one under the other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cesynth.io import InputError, atomic_path, load_nifti, read_json
from cesynth.lesion_truth import ENHANCING, NON_ENHANCING
from cesynth.paper_figures import prepare_panel

LESIONS_PER_TYPE = 2
"""Lesions drawn per lesion type (the largest scored ones)."""
MARGIN_VOXELS = 4
"""Voxels of context around a lesion's extent."""
INPUT_PANELS = (("T1w", "T1"), ("T2w", "T2"), ("adc", "ADC"), ("truth", "CE-T1 (real)"))


def choose_lesions(subjects: Mapping[str, Mapping[str, Any]]
                   ) -> list[tuple[str, dict[str, Any]]]:
    """The lesions to draw: per type, the :data:`LESIONS_PER_TYPE` largest scored ones.

    Args:
        subjects: subject -> its files, with ``lesions_sidecar`` (the model-grid lesion JSON).

    Returns:
        ``(subject, lesion entry)`` pairs, grouped by type.
    """
    by_type: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for subject, files in subjects.items():
        for lesion in read_json(files["lesions_sidecar"]).get("lesions", []):
            if lesion.get("model_voxels", 0) > 0:
                by_type.setdefault(str(lesion.get("type", "lesion")), []).append((subject, lesion))
    chosen = []
    for kind in sorted(by_type):
        largest = sorted(by_type[kind], key=lambda pair: -pair[1]["model_voxels"])
        chosen += largest[:LESIONS_PER_TYPE]
    return chosen


def lesion_panels(subjects: Mapping[str, Mapping[str, Any]], models: Sequence[str],
                  out_png: str | os.PathLike) -> Path:
    """Draw the zoomed lesion panels.

    Args:
        subjects: subject -> files: ``T1w``, ``T2w``, ``adc``, ``truth`` (model grid,
            normalised; absent inputs allowed), ``classes``, ``instances`` and
            ``lesions_sidecar`` (the model-grid truth), and one synthetic image per model.
        models: the model names (keys of each subject's files), in column order.
        out_png: the PNG to write (atomically).

    Returns:
        ``out_png``.
    """
    chosen = choose_lesions(subjects)
    if not chosen:
        raise InputError(out_png, "no lesion to draw")
    titles = [label for _, label in INPUT_PANELS] + list(models)
    figure = Figure(figsize=(1.9 * len(titles), 2.0 * len(chosen) + 0.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(chosen), len(titles), squeeze=False)
    for row, (subject, lesion) in enumerate(chosen):
        crops, outline = _lesion_crops(subjects[subject], lesion, models)
        for col, crop in enumerate(crops):
            ax = axes[row, col]
            if not prepare_panel(ax, titles[col] if row == 0 else None, crop is not None, 8):
                continue
            ax.imshow(np.rot90(crop), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if col == 0 and outline.any():
                ax.contour(np.rot90(outline.astype(float)), levels=[0.5], colors="tab:red",
                           linewidths=0.8)
        axes[row, 0].set_ylabel(f"{subject}\nlesion {lesion['label']}: {lesion.get('type')}",
                                fontsize=7)
    figure.suptitle("Lesions zoomed (red: the enhancing part in truth)", fontsize=10)
    figure.tight_layout()
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png")
    return Path(out_png)


def _lesion_crops(files: Mapping[str, Any], lesion: Mapping[str, Any], models: Sequence[str]
                  ) -> tuple[list[np.ndarray | None], np.ndarray]:
    inside = np.rint(_volume(files["instances"])) == lesion["label"]
    classes = np.rint(_volume(files["classes"]))
    core = inside & np.isin(classes, (ENHANCING, NON_ENHANCING))  # the lesion without its edema
    cut = core if core.any() else inside
    index = int(round(float(np.nonzero(cut)[2].mean())))  # through the lesion's centre
    xs, ys = np.nonzero(inside[:, :, index])
    box = (slice(max(0, xs.min() - MARGIN_VOXELS), xs.max() + MARGIN_VOXELS + 1),
           slice(max(0, ys.min() - MARGIN_VOXELS), ys.max() + MARGIN_VOXELS + 1))
    keys = [key for key, _ in INPUT_PANELS] + list(models)
    crops = [_volume(files[key])[:, :, index][box] if files.get(key) else None for key in keys]
    outline = (classes[:, :, index] == ENHANCING)[box]
    return crops, outline & inside[:, :, index][box]


def _volume(path: str | os.PathLike) -> np.ndarray:
    return np.asarray(load_nifti(path).get_fdata(dtype=np.float32))


__all__ = ["LESIONS_PER_TYPE", "MARGIN_VOXELS", "choose_lesions", "lesion_panels"]
