"""The validation subjects' scores: what chooses between recipes, never what is reported.

Every evaluated model synthesizes the Set A validation subjects so that its enhancement threshold
is chosen on them (:func:`cesynth.enhancement.choose_threshold_files`). :func:`tabulate_validation`
scores the same images, so that a study chooses a recipe, a knob's value or a configuration on
patients it never reports (issue 23's curves). Only threshold-free columns are kept: the
threshold was chosen on these very subjects, so detection columns (sensitivity, Dice, lesions
found, false positives) would be scored in-sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cesynth.evaluate import ID_COLUMNS
from cesynth.evaluation_tables import read_subject_metrics, summarise
from cesynth.io import write_tsv

VALIDATION_SET = "validation"
"""The ``set`` value of a validation subject's scores."""
SELECTION_COLUMNS = ("brain_mae", "brain_psnr", "brain_ssim", "enh_brain_corr", "enh_auc",
                     "enh_lesion_auc", "enh_recovered_share", "enh_core_auc",
                     "enh_core_recovered_share")
"""Threshold-free columns kept for selection: image similarity and the enhancement endpoints
that rank or integrate the synthetic enhancement without a threshold."""


def tabulate_validation(json_paths: Sequence[str | os.PathLike],
                        out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the validation subjects' per-subject scores and their means per model.

    Args:
        json_paths: validation subjects' metrics JSONs
            (:func:`cesynth.evaluate.evaluate_subject`).
        out_dir: where ``metrics.tsv`` and ``summary.tsv`` go.

    Returns:
        Paths by name: ``metrics`` (one row per subject and model, :data:`SELECTION_COLUMNS`)
        and ``summary`` (:func:`cesynth.evaluation_tables.summarise` per model).
    """
    per_subject = read_subject_metrics(json_paths)[[*ID_COLUMNS, *SELECTION_COLUMNS]]
    out = Path(out_dir)
    paths = {"metrics": out / "metrics.tsv", "summary": out / "summary.tsv"}
    write_tsv(per_subject, paths["metrics"])
    write_tsv(summarise(per_subject, by=("set", "model")), paths["summary"])
    return paths


__all__ = ["SELECTION_COLUMNS", "VALIDATION_SET", "tabulate_validation"]
