"""Statistics over subjects and the evaluation stage's tables, from the per-subject metrics.

The per-subject table has one tidy row per subject and model (:data:`cesynth.evaluate.ID_COLUMNS`
and :data:`cesynth.evaluate.METRIC_COLUMNS`, NaN where a region is absent), read from the
metrics JSONs :func:`cesynth.evaluate.evaluate_subject` writes (:func:`read_subject_metrics`).
It is summarised as mean and sample standard deviation per model (:func:`summarise`,
:func:`format_mean_sd`) and compared with paired t-tests (:func:`paired_ttest`,
:func:`pairwise_ttests`); :func:`tabulate_evaluation` writes the stage's tables, including
Markdown in the layout of the paper's Tables I and II next to its reported values
(:func:`paper_tables`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cesynth.evaluate import ID_COLUMNS, METRIC_COLUMNS, flatten_metrics
from cesynth.io import InputError, atomic_path, read_json, write_tsv
from cesynth.paper_values import final_model_values

PAPER_REFERENCE = final_model_values()
"""The paper's 3D HR-FCN on its (non-public) UCLA data: Tables I and II, by (set, metric)."""

TABLE_COLUMNS = {
    "A": (("brain_mae", "Brain MAE", 3), ("brain_psnr", "Brain PSNR (dB)", 2),
          ("brain_ssim", "Brain SSIM", 3)),
    "B": (("brain_psnr", "Brain PSNR (dB)", 2), ("tumor_psnr", "Tumor PSNR (dB)", 2),
          ("brain_ssim", "Brain SSIM", 3), ("tumor_ssim", "Tumor SSIM", 3),
          ("tumor_mae", "Tumor MAE", 3)),
}
"""Columns of the paper-style tables per set: (metric column, heading, decimals)."""


# ---------------------------------------------------------------- statistics


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
        ``t``, ``p`` (two-sided, :func:`scipy.stats.ttest_rel`), ``n`` (pairs with a finite
        metric for both models), ``mean_difference`` and ``sd_difference`` (mean and sample sd
        of ``a - b``).

    Raises:
        InputError: missing columns, a subject listed twice for one model, or fewer than 2
            subjects with the metric for both models.
    """
    who = f"{metric} {model_a} vs {model_b}"
    if not {"subject", "model", metric} <= set(per_subject.columns):
        raise InputError(who, "per-subject table needs columns subject, model and the metric")
    pairs = pd.concat([_model_metric(per_subject, metric, model, who)
                       for model in (model_a, model_b)], axis=1, join="inner")
    # an infinite PSNR (a prediction identical to the truth) has no finite difference to test
    pairs = pairs[np.isfinite(pairs.to_numpy(float)).all(axis=1)]
    if len(pairs) < 2:
        raise InputError(who, f"{len(pairs)} subject(s) with the metric for both models; "
                              "a paired t-test needs at least 2")
    a, b = pairs.iloc[:, 0].to_numpy(float), pairs.iloc[:, 1].to_numpy(float)
    result = stats.ttest_rel(a, b)
    return {"t": float(result.statistic), "p": float(result.pvalue), "n": len(pairs),
            "mean_difference": float(np.mean(a - b)), "sd_difference": float(np.std(a - b, ddof=1))}


def _model_metric(per_subject: pd.DataFrame, metric: str, model: str, who: str) -> pd.Series:
    """The metric of one model indexed by subject (sorted)."""
    rows = per_subject[per_subject["model"] == model]
    twice = rows["subject"][rows["subject"].duplicated()].unique().tolist()
    if twice:
        raise InputError(who, f"subjects listed more than once for model {model}: {twice}")
    return rows.set_index("subject")[metric].rename(model).sort_index()


# ---------------------------------------------------------------- the evaluation stage


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
        json_paths: files written by :func:`cesynth.evaluate.evaluate_subject`.
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
    "PAPER_REFERENCE", "TABLE_COLUMNS",
    "experiment_scores", "format_mean_sd", "paired_ttest", "pairwise_ttests", "paper_tables",
    "read_subject_metrics", "summarise", "tabulate_evaluation",
]
