"""Statistics over subjects and the evaluation stage's tables, from the per-subject metrics.

The per-subject table has one tidy row per subject and model (:data:`cesynth.evaluate.ID_COLUMNS`
and :data:`cesynth.evaluate.METRIC_COLUMNS`, NaN where a region is absent), read from the
metrics JSONs :func:`cesynth.evaluate.evaluate_subject` writes (:func:`read_subject_metrics`).
The table also carries the enhancement endpoints (:data:`cesynth.enhancement.ENDPOINT_COLUMNS`,
NaN where not applicable), so :data:`SCORE_COLUMNS` is every scored column. It is summarised as
mean, sample standard deviation and a seeded 95% bootstrap interval of the mean over subjects
per model (:func:`summarise`, :func:`bootstrap_interval`, :func:`format_mean_sd`) and compared
with paired t-tests (:func:`paired_ttest`, :func:`pairwise_ttests`); lesions are pooled per set
and model by size (:func:`lesion_sensitivity_by_size`). :func:`tabulate_evaluation` writes the
stage's tables, including Markdown in the layout of the paper's Tables I and II next to its
reported values (:func:`paper_tables`) and the endpoints' tables (:func:`endpoint_tables`).

Seeds (``evaluation.seeds``): the evaluated models that are seeds of one configuration are
averaged per patient first (:func:`seed_average`); a configuration's row shows the mean over
seeds, the sd over patients of the seed-averaged score and, beside it, the sd between seeds of
the per-seed means over patients (:func:`between_seed_sd`, :func:`summarise_configurations`).
Comparisons are paired t-tests over patients on the seed-averaged scores; a comparison with
:data:`MIN_TESTED_PAIRS` - 1 or fewer patients is descriptive (no test), and p-values are
Holm-adjusted within their family (:func:`holm`). With one seed per configuration the tables
are today's, with the spread between seeds n/a.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cesynth.enhancement import (
    ENDPOINT_COLUMNS,
    SMALL_LESION_MM,
    flatten_endpoints,
    lesion_rows,
)
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
SCORE_COLUMNS = METRIC_COLUMNS + ENDPOINT_COLUMNS
"""Every scored column of the per-subject table: the paper's metrics, then the endpoints."""
TESTED_COLUMNS = tuple(c for c in SCORE_COLUMNS
                       if c not in ("lesions_scored", "lesions_not_scored",
                                    "nonenhancing_lesions", "threshold_degenerate"))
"""Columns compared between models by paired t-tests (lesion counts are the same truth)."""
THRESHOLD_COLUMNS = ("enh_threshold", "enh_threshold_source")
"""Per-subject columns naming the ``E'`` threshold and where it came from (not summarised)."""
ENDPOINT_TABLE = (
    ("enh_auc", "Enh. AUC", 3), ("enh_lesion_auc", "Lesion AUC (enh. vs non-enh.)", 3),
    ("enh_recovered_share", "Recovered contrast share", 3),
    ("enh_core_auc", "Core AUC (enh. vs necrotic/non-enh.)", 3),
    ("enh_core_recovered_share", "Recovered core contrast share", 3),
    ("enh_sensitivity", "Enh. sens.", 3),
    ("enh_specificity", "Enh. spec.", 3), ("enh_dice", "Enh. Dice", 3),
    ("enh_called_share", "Called share of brain", 3),
    ("enh_brain_corr", "E corr (brain)", 3), ("enh_brain_mae", "E MAE (brain)", 3),
    ("enh_tumor_corr", "E corr (tumor)", 3), ("enh_tumor_mae", "E MAE (tumor)", 3),
    ("lesion_sensitivity", "Lesion sens.", 2),
    ("lesion_sensitivity_small", f"Lesion sens. <{SMALL_LESION_MM:g} mm", 2),
    ("lesion_sensitivity_large", f"Lesion sens. >={SMALL_LESION_MM:g} mm", 2),
    ("nonenhancing_called", "Non-enh. lesions called", 2),
    ("false_positives", "FP comp./patient", 2),
    ("threshold_degenerate", "Degenerate threshold", 2),
    ("brasyn_tumor_ssim", "BraSyn SSIM tumor", 3),
    ("brasyn_outside_ssim", "BraSyn SSIM outside", 3),
)
"""Columns of the endpoints' table: (column, heading, decimals)."""
BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the subjects for a bootstrap interval."""
BOOTSTRAP_SEED = 20240611
"""Seed of every bootstrap (each interval starts from it: the same data give the same interval)."""
LESION_COLUMNS = ("subject", "set", "model", "lesion", "type", "volume_mm3", "diameter_mm",
                  "found")
"""Columns of the per-lesion table."""
MIN_TESTED_PAIRS = 4
"""Patients a paired test needs: with 3 or fewer a comparison is descriptive (no test)."""
TESTED = "paired t"
DESCRIPTIVE = "descriptive"
"""The ``test`` column's values: tested, or too few patients for a test."""
TTEST_COLUMNS = ("set", "metric", "model_a", "model_b", "seeds_a", "seeds_b", "n",
                 "mean_difference", "t", "p", "p_holm", "test", "family")
"""Columns of ``ttests.tsv``."""


# ---------------------------------------------------------------- statistics


def summarise(per_subject: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Mean, sample standard deviation (``ddof = 1``) and bootstrap interval per group.

    Args:
        per_subject: tidy table, one row per subject and model, with the ``by`` columns and
            any of :data:`SCORE_COLUMNS` (NaN values are skipped).
        by: grouping columns; groups keep their order of first appearance.

    Returns:
        One row per group: the ``by`` columns, ``n`` (rows in the group) and
        ``<metric>_mean``, ``<metric>_sd``, ``<metric>_ci_low`` and ``<metric>_ci_high``
        (:func:`bootstrap_interval`) for each metric column present.

    Raises:
        InputError: a ``by`` column is missing or no metric column is present.
    """
    by = list(by)
    missing = [column for column in by if column not in per_subject.columns]
    metrics = [column for column in SCORE_COLUMNS if column in per_subject.columns]
    if missing or not metrics:
        raise InputError("per-subject table", f"missing grouping columns {missing} or metric "
                                              f"columns (have {list(per_subject.columns)})")
    numbers = per_subject[by + metrics].copy()  # a table read as text (read_tsv) too
    numbers[metrics] = numbers[metrics].apply(pd.to_numeric, errors="coerce")
    groups = numbers.groupby(by, sort=False, dropna=False)
    table = groups.size().rename("n").to_frame()
    for column in metrics:
        values = groups[column]
        table[f"{column}_mean"] = values.mean()
        table[f"{column}_sd"] = values.std(ddof=1)
        intervals = values.apply(lambda v: bootstrap_interval(v.to_numpy(float)))
        table[f"{column}_ci_low"] = [low for low, _ in intervals]
        table[f"{column}_ci_high"] = [high for _, high in intervals]
    return table.reset_index()


def bootstrap_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over subjects (seeded, reproducible).

    Args:
        values: one value per subject; NaN values (not applicable) are left out.
        level: the coverage.

    Returns:
        ``(low, high)``; NaN for fewer than 2 values or a non-finite one (an unbounded PSNR).
    """
    values = values[~np.isnan(values)]
    if values.size < 2 or not np.isfinite(values).all():
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = values[rng.integers(0, values.size, (BOOTSTRAP_RESAMPLES, values.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, (tail, 100 - tail))
    return float(low), float(high)


def bootstrap_ratio(found: np.ndarray, total: np.ndarray,
                    level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval over subjects of a pooled ratio ``sum(found) / sum(total)``.

    Resamples where the drawn subjects hold no lesion are left out. Returns NaN for fewer than
    2 subjects.
    """
    if found.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    drawn = rng.integers(0, found.size, (BOOTSTRAP_RESAMPLES, found.size))
    totals = total[drawn].sum(axis=1)
    ratios = found[drawn].sum(axis=1)[totals > 0] / totals[totals > 0]
    if ratios.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(ratios, (tail, 100 - tail))
    return float(low), float(high)


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


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (one family), in the input's order.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` (i from 1) is ``max over j <= i of (m - j + 1) * p_(j)``, capped at 1. It controls
    the family-wise error rate without assuming independence. (SciPy has no Holm: its
    ``false_discovery_control`` is Benjamini-Hochberg/Yekutieli.)

    Args:
        p_values: the family's raw p-values; NaN (no test) is left out of ``m`` and stays NaN.

    Returns:
        The adjusted p-values, aligned with ``p_values``.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    steps = (order.size - np.arange(order.size)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def configuration_of(models: Sequence[str],
                     configurations: Mapping[str, str] | None) -> list[str]:
    """Each model's configuration (a model not in ``configurations`` is its own)."""
    configurations = configurations or {}
    return [str(configurations.get(model, model)) for model in models]


def seed_average(per_subject: pd.DataFrame,
                 configurations: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The per-subject table with each configuration's seeds averaged per patient.

    Args:
        per_subject: tidy table, one row per subject, set and model.
        configurations: evaluated model -> the configuration it is a seed of; a model not
            listed (a floor, a cascade model) is its own configuration.

    Returns:
        One row per subject, set and configuration (in ``model``, order of first appearance):
        ``seeds`` (the seed models averaged) and the mean over them of each score column
        (NaN skipped). Other columns are dropped.
    """
    table = per_subject.copy()
    table["model"] = configuration_of(table["model"].astype(str).tolist(), configurations)
    scores = [c for c in SCORE_COLUMNS if c in table.columns]
    table[scores] = table[scores].apply(pd.to_numeric, errors="coerce")
    groups = table.groupby(["subject", "set", "model"], sort=False, dropna=False)
    averaged = groups[scores].mean()
    averaged.insert(0, "seeds", groups.size())
    return averaged.reset_index()


def between_seed_sd(per_subject: pd.DataFrame,
                    configurations: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The spread between a configuration's seeds: sd of the per-seed means over patients.

    Args:
        per_subject: tidy table, one row per subject, set and model.
        configurations: as for :func:`seed_average`.

    Returns:
        One row per set and configuration (``set``, ``model``): ``seeds`` (seed models scored
        on the set) and ``<metric>_seed_sd``, the sample sd (``ddof = 1``) over seeds of each
        seed's mean over patients; NaN with one seed.
    """
    table = per_subject.copy()
    table["configuration"] = configuration_of(table["model"].astype(str).tolist(),
                                              configurations)
    scores = [c for c in SCORE_COLUMNS if c in table.columns]
    table[scores] = table[scores].apply(pd.to_numeric, errors="coerce")
    per_seed = table.groupby(["set", "configuration", "model"], sort=False)[scores].mean()
    groups = per_seed.groupby(level=["set", "configuration"], sort=False)
    spread = groups.std(ddof=1).add_suffix("_seed_sd")
    spread.insert(0, "seeds", groups.size())
    return spread.rename_axis(["set", "model"]).reset_index()


def summarise_configurations(per_subject: pd.DataFrame,
                             configurations: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Per set and configuration: mean over seeds, sd over patients and sd between seeds.

    Returns:
        :func:`summarise` of the seed-averaged table (:func:`seed_average`) by ``set`` and
        ``model`` (the configuration), so ``<metric>_sd`` and the bootstrap interval are over
        patients of the seed-averaged score, with ``seeds`` and ``<metric>_seed_sd``
        (:func:`between_seed_sd`) beside them.
    """
    summary = summarise(seed_average(per_subject, configurations), by=("set", "model"))
    spread = between_seed_sd(per_subject, configurations)
    merged = summary.merge(spread, on=["set", "model"], how="left")
    return merged[["set", "model", "n", "seeds",
                   *(c for c in merged.columns if c not in ("set", "model", "n", "seeds"))]]


# ---------------------------------------------------------------- the evaluation stage


def read_subject_metrics(json_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The per-subject table from metrics JSONs: :data:`ID_COLUMNS`, :data:`SCORE_COLUMNS` and
    :data:`THRESHOLD_COLUMNS` (empty for a model without enhancement endpoints)."""
    rows = []
    for path in json_paths:
        record = read_json(path)
        enhancement = record.get("enhancement") or {}
        rows.append({key: record[key] for key in ID_COLUMNS} | flatten_metrics(record)
                    | flatten_endpoints(record)
                    | {"enh_threshold": enhancement.get("threshold", math.nan),
                       "enh_threshold_source": enhancement.get("threshold_source", "")})
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, *SCORE_COLUMNS, *THRESHOLD_COLUMNS])


def read_lesions(json_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per scored lesion, subject and model (:data:`LESION_COLUMNS`) from metrics JSONs."""
    rows = []
    for path in json_paths:
        record = read_json(path)
        ids = {key: record[key] for key in ID_COLUMNS}
        rows += [ids | row for row in lesion_rows(record)]
    return pd.DataFrame(rows, columns=list(LESION_COLUMNS))


def lesion_size_classes(lesions: pd.DataFrame) -> pd.Series:
    """Each lesion's size classes: below or from :data:`SMALL_LESION_MM` and its volume tertile.

    Tertile edges come from the distinct lesions (subject, lesion) of the lesion's set, so every
    model is scored on the same classes.

    Returns:
        A Series of ``(diameter class, tertile class)`` tuples, aligned with ``lesions``.
    """
    classes = pd.Series([("", "")] * len(lesions), index=lesions.index, dtype=object)
    for _, rows in lesions.groupby("set"):
        distinct = rows.drop_duplicates(["subject", "lesion"])["volume_mm3"].to_numpy(float)
        edges = np.quantile(distinct, [1 / 3, 2 / 3])
        names = [f"tertile 1 (<= {edges[0]:.0f} mm3)",
                 f"tertile 2 ({edges[0]:.0f}-{edges[1]:.0f} mm3)",
                 f"tertile 3 (> {edges[1]:.0f} mm3)"]
        tertile = np.searchsorted(edges, rows["volume_mm3"].to_numpy(float), side="left")
        small = rows["diameter_mm"].to_numpy(float) < SMALL_LESION_MM
        diameter = np.where(small, f"< {SMALL_LESION_MM:g} mm", f">= {SMALL_LESION_MM:g} mm")
        classes.loc[rows.index] = list(zip(diameter, (names[i] for i in tertile), strict=True))
    return classes


def lesion_sensitivity_by_size(lesions: pd.DataFrame) -> pd.DataFrame:
    """Pooled lesion sensitivity per set, model and size class, with a bootstrap interval.

    Returns:
        Columns ``set``, ``model``, ``size_class``, ``median_diameter_mm``, ``lesions``,
        ``found``, ``sensitivity``, ``ci_low`` and ``ci_high`` (bootstrap over subjects,
        :func:`bootstrap_ratio`).
    """
    columns = ["set", "model", "size_class", "median_diameter_mm", "lesions", "found",
               "sensitivity", "ci_low", "ci_high"]
    if lesions.empty:
        return pd.DataFrame(columns=columns)
    classes = lesion_size_classes(lesions)
    long = pd.concat([lesions.assign(size_class=classes.str[0]),
                      lesions.assign(size_class=classes.str[1])], ignore_index=True)
    rows = []
    for (set_name, model, size), group in long.groupby(["set", "model", "size_class"],
                                                       sort=True):
        per_subject = group.groupby("subject")["found"].agg(["sum", "count"])
        low, high = bootstrap_ratio(per_subject["sum"].to_numpy(float),
                                    per_subject["count"].to_numpy(float))
        rows.append({"set": set_name, "model": model, "size_class": size,
                     "median_diameter_mm": float(group["diameter_mm"].median()),
                     "lesions": len(group), "found": int(group["found"].sum()),
                     "sensitivity": float(group["found"].mean()), "ci_low": low,
                     "ci_high": high})
    return pd.DataFrame(rows, columns=columns)


def pairwise_ttests(per_subject: pd.DataFrame,
                    configurations: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Paired t-tests between every two configurations, per set and metric, on the patients'
    seed-averaged scores (:func:`seed_average`), Holm-adjusted per set and metric.

    A pair with 2 or 3 patients is listed as :data:`DESCRIPTIVE` (mean difference, no t or
    p); with fewer than 2 it is left out. Each (set, metric) is one family of Holm's
    correction: the comparisons of every two configurations on that metric in that set.

    Args:
        per_subject: tidy table, one row per subject, set and model.
        configurations: evaluated model -> configuration (:func:`seed_average`); None: every
            model is a configuration of one seed.

    Returns:
        :data:`TTEST_COLUMNS`: ``seeds_a``/``seeds_b`` seeds averaged, ``n`` patients, ``p``
        raw, ``p_holm`` adjusted within ``family`` (which names the set, metric and number of
        tests), ``test`` (:data:`TESTED` or :data:`DESCRIPTIVE`). Empty with one model.
    """
    averaged = seed_average(per_subject, configurations)
    seeds = averaged.groupby(["set", "model"], sort=False)["seeds"].max()
    rows = []
    for set_name, rows_of_set in averaged.groupby("set", sort=True):
        models = list(dict.fromkeys(rows_of_set["model"]))
        for metric in TESTED_COLUMNS:
            if metric not in rows_of_set.columns:
                continue
            family = []
            for i, model_a in enumerate(models):
                for model_b in models[i + 1:]:
                    try:
                        with warnings.catch_warnings():  # differences without spread: t is nan
                            warnings.simplefilter("ignore", RuntimeWarning)
                            test = paired_ttest(rows_of_set, metric, model_a, model_b)
                    except InputError:
                        continue  # fewer than 2 pairs (e.g. no tumor masks in Set A)
                    tested = test["n"] >= MIN_TESTED_PAIRS
                    family.append({"set": set_name, "metric": metric, "model_a": model_a,
                                   "model_b": model_b, "seeds_a": int(seeds[(set_name, model_a)]),
                                   "seeds_b": int(seeds[(set_name, model_b)]), "n": test["n"],
                                   "mean_difference": test["mean_difference"],
                                   "t": test["t"] if tested else math.nan,
                                   "p": test["p"] if tested else math.nan,
                                   "test": TESTED if tested else DESCRIPTIVE})
            adjusted = holm([row["p"] for row in family])
            size = int(np.count_nonzero(~np.isnan([row["p"] for row in family])))
            for row, p_holm in zip(family, adjusted, strict=True):
                row["p_holm"] = p_holm
                row["family"] = f"set {set_name} {metric}: {size} tests"
            rows += family
    return pd.DataFrame(rows, columns=list(TTEST_COLUMNS))


def with_seed_sd(cell: str, seed_sd: float, seeds: int, digits: int) -> str:
    """A table cell with the sd between seeds appended, ``28.24±1.26 (±0.12)``; unchanged
    for a row of one seed (its spread between seeds is n/a)."""
    if cell == "n/a" or seeds < 2 or math.isnan(seed_sd):
        return cell
    return f"{cell} (±{seed_sd:.{digits}f})"


def seeds_note(summary: pd.DataFrame) -> str:
    """The line that says how the rows average seeds (and when there is one seed each)."""
    seeds = pd.to_numeric(summary.get("seeds", pd.Series([1])), errors="coerce").fillna(1)
    if seeds.max() < 2:
        return ("One seed per configuration: the spread between seeds is n/a (training "
                "variation is not measured; declare `evaluation.seeds` to measure it).\n")
    return ("Each configuration's seeds are averaged per patient: a cell is the mean over "
            "seeds ± the sd over patients of the seed-averaged score, (± the sd between seeds "
            "of the per-seed means over patients); a row of one seed has no spread between "
            "seeds (n/a).\n")


def paper_tables(summary: pd.DataFrame) -> str:
    """Markdown tables in the layout of the paper's Tables I (Set A) and II (Set B).

    Args:
        summary: :func:`summarise_configurations` output (or :func:`summarise` output grouped
            by ``("set", "model")``: one seed per row).

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
        parts.append(seeds_note(rows))
        parts.append("| model | n | seeds | " + " | ".join(c[1] for c in columns) + " |")
        parts.append("|---|---|---|" + "---|" * len(columns))
        for row in rows.to_dict("records"):
            seeds = int(row.get("seeds", 1))
            cells = [with_seed_sd(format_mean_sd(row.get(f"{c}_mean", math.nan),
                                                 row.get(f"{c}_sd", math.nan), d),
                                  row.get(f"{c}_seed_sd", math.nan), seeds, d)
                     for c, _, d in columns]
            parts.append(f"| {row['model']} | {row['n']} | {seeds} | " + " | ".join(cells)
                         + " |")
        paper = [str(PAPER_REFERENCE.get((set_name, c), "")) for c, _, _ in columns]
        parts.append("| paper, 3D HR-FCN (UCLA data) | | | " + " | ".join(paper) + " |\n")
    return "\n".join(parts)


def format_interval(mean: float, sd: float, low: float, high: float, digits: int) -> str:
    """``mean±sd [low, high]``: :func:`format_mean_sd` with the bootstrap interval, if any."""
    text = format_mean_sd(mean, sd, digits)
    if text == "n/a" or math.isnan(low) or math.isnan(high):
        return text
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def endpoint_tables(summary: pd.DataFrame, per_subject: pd.DataFrame,
                    by_size: pd.DataFrame) -> str:
    """Markdown tables of the enhancement endpoints per set, lesion sensitivity by size and the
    ``E'`` threshold of each model.

    Args:
        summary: :func:`summarise_configurations` output (or :func:`summarise` output grouped
            by ``("set", "model")``).
        per_subject: the per-subject table (its :data:`THRESHOLD_COLUMNS`).
        by_size: :func:`lesion_sensitivity_by_size` output.

    Returns:
        The Markdown text (empty when no model has enhancement endpoints).
    """
    columns = [c for c in ENDPOINT_TABLE if f"{c[0]}_mean" in summary.columns]
    rows = summary[summary[[f"{c}_mean" for c, _, _ in columns]].notna().any(axis=1)]
    if rows.empty:
        return ""
    parts = ["## Enhancement, lesions and BraSyn SSIM (mean±sd [95% bootstrap interval over "
             "subjects], (± sd between seeds))\n"]
    for set_name, rows_of_set in rows.groupby("set", sort=True):
        kept = [c for c in columns if rows_of_set[f"{c[0]}_mean"].notna().any()]
        parts.append(f"### Set {set_name}\n")
        parts.append("| model | n | " + " | ".join(c[1] for c in kept) + " |")
        parts.append("|---|---|" + "---|" * len(kept))
        for row in rows_of_set.to_dict("records"):
            seeds = int(row.get("seeds", 1))
            cells = [with_seed_sd(format_interval(row[f"{c}_mean"], row[f"{c}_sd"],
                                                  row[f"{c}_ci_low"], row[f"{c}_ci_high"], d),
                                  row.get(f"{c}_seed_sd", math.nan), seeds, d)
                     for c, _, d in kept]
            parts.append(f"| {row['model']} | {row['n']} | " + " | ".join(cells) + " |")
        parts.append("")
    parts.append(_size_table(by_size))
    parts.append(_threshold_table(per_subject))
    return "\n".join(parts)


def _size_table(by_size: pd.DataFrame) -> str:
    if by_size.empty:
        return "No scored enhancing lesions.\n"
    lines = ["## Lesion sensitivity by size (pooled lesions, 95% bootstrap interval over "
             "subjects)\n", "| set | model | size | lesions | found | sensitivity |",
             "|---|---|---|---|---|---|"]
    for row in by_size.to_dict("records"):
        interval = ("" if math.isnan(row["ci_low"])
                    else f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]")
        lines.append(f"| {row['set']} | {row['model']} | {row['size_class']} | "
                     f"{row['lesions']} | {row['found']} | {row['sensitivity']:.2f}{interval} |")
    return "\n".join(lines) + "\n"


def _threshold_table(per_subject: pd.DataFrame) -> str:
    rows = per_subject[per_subject["enh_threshold_source"].fillna("") != ""]
    lines = ["## Threshold on the synthetic enhancement E'\n",
             "Chosen per model on the validation subjects with lesions (Youden's J against "
             "where the agent is), never on the reported sets; the fallback, without such "
             "subjects, is delta. A threshold calling more than half of the brain is "
             "degenerate: its detection columns are left empty.\n",
             "| model | threshold | source |", "|---|---|---|"]
    for (model, source), group in rows.groupby(["model", "enh_threshold_source"], sort=False):
        lines.append(f"| {model} | {group['enh_threshold'].iloc[0]:.4f} | {source} |")
    return "\n".join(lines) + "\n"


TESTS_NOTE = (f"Paired t-tests between configurations (`ttests.tsv`): over patients, on "
              "each configuration's seed-averaged scores; p raw and Holm-adjusted within each "
              "family (one set and metric: every two configurations compared on it, named in "
              f"its `family` column); a comparison of {MIN_TESTED_PAIRS - 1} or fewer patients "
              "is descriptive (no test).\n")
"""The tables' line on the paired tests."""


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
        for column in SCORE_COLUMNS:
            value = row.get(f"{column}_mean")
            if value is not None and math.isfinite(float(value)):
                scores[f"set{row['set']}_{column}_mean"] = float(value)
    return scores


def tabulate_evaluation(json_paths: Sequence[str | os.PathLike],
                        out_dir: str | os.PathLike,
                        configurations: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write the evaluation tables from the per-subject metrics JSONs.

    Args:
        json_paths: files written by :func:`cesynth.evaluate.evaluate_subject`.
        out_dir: the evaluation folder.
        configurations: evaluated model -> the configuration it is a seed of (declared seeds);
            None or a model not listed: a configuration of its own.

    Returns:
        Paths by name: ``metrics`` (one row per subject and model), ``summary`` (mean, sd and
        bootstrap interval per set and model, each seed its own row), ``configurations``
        (:func:`summarise_configurations`: per set and configuration, seeds averaged, sd over
        patients and between seeds), ``ttests`` (:func:`pairwise_ttests`: paired t-tests
        between configurations on seed-averaged scores, raw and Holm-adjusted p), ``lesions``
        (one row per scored lesion, subject and model), ``lesion_sensitivity``
        (:func:`lesion_sensitivity_by_size`) and ``tables`` (Markdown: the paper's layout,
        then the endpoints, by configuration).
    """
    out = Path(out_dir)
    per_subject = read_subject_metrics(json_paths)
    summary = summarise(per_subject, by=("set", "model"))
    by_configuration = summarise_configurations(per_subject, configurations)
    lesions = read_lesions(json_paths)
    by_size = lesion_sensitivity_by_size(lesions)
    paths = {"metrics": out / "metrics.tsv", "summary": out / "summary.tsv",
             "configurations": out / "configurations.tsv",
             "ttests": out / "ttests.tsv", "lesions": out / "lesions.tsv",
             "lesion_sensitivity": out / "lesion_sensitivity.tsv", "tables": out / "tables.md"}
    write_tsv(per_subject, paths["metrics"])
    write_tsv(summary, paths["summary"])
    write_tsv(by_configuration, paths["configurations"])
    write_tsv(pairwise_ttests(per_subject, configurations), paths["ttests"])
    write_tsv(lesions, paths["lesions"])
    write_tsv(by_size, paths["lesion_sensitivity"])
    text = ("# Synthetic CE-T1 against the real CE-T1\n\n" + paper_tables(by_configuration)
            + "\n" + TESTS_NOTE + "\n" + endpoint_tables(by_configuration, per_subject, by_size))
    with atomic_path(paths["tables"]) as tmp:
        tmp.write_text(text)
    return paths


__all__ = [
    "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "DESCRIPTIVE", "ENDPOINT_TABLE", "LESION_COLUMNS",
    "MIN_TESTED_PAIRS", "PAPER_REFERENCE", "SCORE_COLUMNS", "TABLE_COLUMNS", "TESTED",
    "TESTED_COLUMNS", "TESTS_NOTE", "THRESHOLD_COLUMNS", "TTEST_COLUMNS", "between_seed_sd",
    "bootstrap_interval", "bootstrap_ratio", "configuration_of", "endpoint_tables",
    "experiment_scores", "format_interval", "format_mean_sd", "holm",
    "lesion_sensitivity_by_size", "lesion_size_classes", "paired_ttest", "pairwise_ttests",
    "paper_tables", "read_lesions", "read_subject_metrics", "seed_average", "seeds_note",
    "summarise", "summarise_configurations", "tabulate_evaluation", "with_seed_sd",
]
