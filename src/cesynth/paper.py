"""The paper's tables from evaluation results: catalog, row selection, Tables I-III and V.

Figures: :mod:`cesynth.paper_figures`; the Markdown and the writing of every table and figure:
:mod:`cesynth.paper_report` (:func:`cesynth.paper_report.write_paper_outputs`).

Inputs
======

``per_subject`` (one row per scored subject and evaluated model), as
:func:`cesynth.evaluation_tables.read_subject_metrics` returns it:

* ``subject``: subject label; ``set``: ``"A"`` or ``"B"``; ``model``: the evaluated model's name
  (a ``catalog`` ``model``);
* ``brain_mae``, ``brain_psnr``, ``brain_ssim``, ``tumor_mae``, ``tumor_psnr``, ``tumor_ssim``
  (:data:`cesynth.evaluate.METRIC_COLUMNS`): NaN where the region is absent (tumor in Set A).

A subject appears at most once per set and model. Rows of models absent from the catalog are
ignored.

``catalog`` (one row per evaluated model name):

* ``model``: the name used in ``per_subject``, unique;
* ``experiment``: the training experiment that made it;
* ``variant``: ``full``, or a missing-input evaluation of the same trained model
  (``zero-T2w``, ``zero-adc``, ``zero-T2w-adc``, ``cascade-T2w``, ``cascade-adc``,
  ``cascade-T2w-adc``; :data:`VARIANT_ORDER`);
* ``architecture``: ``hrfcn3d``, ``hrfcn2d``, ``model_a`` .. ``model_d``, ``unet2d``, ``unet3d``,
  or a floor (:data:`FLOORS`): ``floor-t1`` (the normalised T1 as the prediction),
  ``floor-regression`` (a voxel-wise regression from the inputs);
* ``modalities``: the inputs, ``+``-joined (``T1w+T2w+adc``);
* ``l1``, ``l3``: the last training stage's MAE and local-loss weights; ``delta``: the local
  loss's threshold; ``seed``;
* ``reference``: True on exactly one row, the final model every row is compared with (a bool, or
  the text ``true``/``false`` as a TSV gives it);
* optional ``configuration``: the configuration a row is a seed of (``evaluation.seeds``), the
  ``model`` of its first seed; without it every row is a configuration of its own.

Seeds
=====

The rows of one configuration's seeds become one row (:func:`by_configuration`): the first
seed's catalog row, with ``seeds`` (how many) and per patient the mean over seeds of each
metric. Selection, means, sds and tests below run on those rows, so a table compares
configurations, never seeds, and never picks a seed.

Row selection
=============

A row *differs from the reference only in* columns ``X`` when it is not the reference, differs
from it in at least one column of ``X``, and equals it in every other catalog column except
``model``, ``experiment`` and ``reference`` (:data:`IGNORED_COLUMNS`). Numbers are compared as
numbers (``0.1`` equals ``"0.1"``), two missing values are equal. So a table never depends on how
a sweep names its experiments, and a row that differs in two columns (another seed as well as
another architecture) is in no table. :data:`TABLES` says which column each table varies; every
table ends with the reference row, as the paper's tables end with the final model.

Statistics
==========

Each cell is ``mean±sd`` over the subjects a configuration was scored on, of its seed-averaged
scores (sample sd, :func:`cesynth.evaluation_tables.summarise`,
:func:`cesynth.evaluation_tables.format_mean_sd`); ``<key>_seed_sd`` beside it is the sd between
seeds of the per-seed means over subjects (NaN with one seed,
:func:`cesynth.evaluation_tables.between_seed_sd`).
Each row is compared with the reference by a two-sided paired t-test
(:func:`cesynth.evaluation_tables.paired_ttest`) on the seed-averaged scores of the
subjects both were scored on with finite values, for brain PSNR in Set A and tumor PSNR in Set B
(Table II also brain PSNR in Set B), with the effect size: the mean paired difference
``row - reference`` and Cohen's ``d_z = mean difference / sd of the differences``
(``= t / sqrt(n)``). Fewer than 2 pairs give NaN; 2 or 3 pairs
(:data:`cesynth.evaluation_tables.MIN_TESTED_PAIRS`) are descriptive: the effect without t or
p. The p-values of one table are one family: ``<key>_p_holm`` is Holm-adjusted over every test
in the table (:func:`cesynth.evaluation_tables.holm`), and ``holm_family`` says how many.

The paper's own values (:data:`PAPER_VALUES`, its non-public UCLA data) are printed beside ours for
reference; they are not a target the phantom can reach.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cesynth.evaluate import ID_COLUMNS, METRIC_COLUMNS
from cesynth.evaluation_tables import (
    DESCRIPTIVE,
    MIN_TESTED_PAIRS,
    TESTED,
    between_seed_sd,
    holm,
    paired_ttest,
    seed_average,
    summarise,
)
from cesynth.io import InputError
from cesynth.paper_values import PAPER_FINAL_ROW, PAPER_ROWS, PAPER_VALUES

CATALOG_COLUMNS = ("model", "experiment", "variant", "architecture", "modalities", "l1", "l3",
                   "delta", "seed", "reference")
"""Columns the catalog must have (it may have more; they take part in the selection)."""
IGNORED_COLUMNS = ("model", "experiment", "reference", "configuration", "seeds")
"""Catalog columns that row selection does not compare."""
FLOORS = ("floor-t1", "floor-regression")
"""Architectures of the baselines that need no deep model."""
FULL_VARIANT = "full"
VARIANT_ORDER = ("zero-T1w", "zero-T2w", "zero-adc", "zero-T2w-adc", "cascade-T2w", "cascade-adc",
                 "cascade-T2w-adc", FULL_VARIANT)
"""Order of the missing-input variants in Fig. 10 (the paper's panels b-g); others follow."""



@dataclass(frozen=True)
class TableSpec:
    """One table: which catalog rows it holds and which metrics and tests it shows.

    Attributes:
        name: file stem (``table1`` writes ``table1.tsv``) and key of :data:`PAPER_VALUES`.
        title: heading in the Markdown.
        label: the catalog column that tells the rows apart.
        vary: the columns a row may differ in from the reference; None: any (the floors).
        allowed: the values of ``label`` a row may have (their order is the rows' order);
            None: any.
        metrics: metric keys (``A_brain_psnr``) of the mean±sd columns.
        tests: metric keys of the paired tests against the reference.
    """

    name: str
    title: str
    label: str
    vary: tuple[str, ...] | None
    allowed: tuple[str, ...] | None
    metrics: tuple[str, ...]
    tests: tuple[str, ...]

    @property
    def sets(self) -> tuple[str, ...]:
        """The sets the metrics come from, in order."""
        return tuple(dict.fromkeys(key.split("_", 1)[0] for key in self.metrics))


_A_BRAIN = ("A_brain_mae", "A_brain_psnr", "A_brain_ssim")
_B_ALL = ("B_brain_mae", "B_brain_psnr", "B_brain_ssim", "B_tumor_mae", "B_tumor_psnr",
          "B_tumor_ssim")
_BOTH_SETS = ("A_brain_psnr", "A_brain_ssim", "B_brain_psnr", "B_brain_ssim", "B_tumor_psnr",
              "B_tumor_ssim")
_ARCHITECTURES = ("unet2d", "unet3d", "hrfcn2d", "hrfcn3d")
TABLES = (
    TableSpec("table1", "Table I: architectures, test set A, brain", "architecture",
              ("architecture",), _ARCHITECTURES, _A_BRAIN, ("A_brain_psnr",)),
    TableSpec("table2", "Table II: architectures, set B, brain and tumor", "architecture",
              ("architecture",), _ARCHITECTURES, _B_ALL, ("B_brain_psnr", "B_tumor_psnr")),
    TableSpec("table3", "Table III: input modalities", "modalities", ("modalities",), None,
              _BOTH_SETS, ("A_brain_psnr", "B_tumor_psnr")),
    TableSpec("table5", "Table V: ablations (Model-A..D)", "architecture", ("architecture",),
              ("model_a", "model_b", "model_c", "model_d"), _BOTH_SETS,
              ("A_brain_psnr", "B_tumor_psnr")),
    TableSpec("floors", "Floors: no deep model", "architecture", None, FLOORS,
              ("A_brain_mae", *_BOTH_SETS), ("A_brain_psnr", "B_tumor_psnr")),
)
"""The tables :func:`cesynth.paper_report.write_paper_outputs` makes, in order."""


# ---------------------------------------------------------------- checks


def check_catalog(catalog: pd.DataFrame) -> pd.DataFrame:
    """Check the catalog (see the module docstring) and return a copy with clean types.

    Args:
        catalog: one row per evaluated model.

    Returns:
        A copy with ``model`` as text and ``reference`` as bool, index reset.

    Raises:
        InputError: a column is missing, a model is listed twice, or not exactly one row is the
            reference.
    """
    missing = [column for column in CATALOG_COLUMNS if column not in catalog.columns]
    if missing:
        raise InputError("model catalog", f"missing columns {missing}")
    table = catalog.reset_index(drop=True).copy()
    table["model"] = table["model"].astype(str)
    table["reference"] = [_as_bool(value) for value in table["reference"]]
    twice = table["model"][table["model"].duplicated()].tolist()
    if twice:
        raise InputError("model catalog", f"models listed more than once: {twice}")
    if int(table["reference"].sum()) != 1:
        raise InputError("model catalog", f"{int(table['reference'].sum())} rows are marked "
                                          "reference; exactly one must be")
    return table


def check_per_subject(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Check the per-subject table (see the module docstring) and return a clean copy.

    Args:
        per_subject: :func:`cesynth.evaluation_tables.read_subject_metrics` output.

    Returns:
        A copy with ``subject``, ``set`` and ``model`` as text and the metrics as floats (a
        table read by :func:`cesynth.io.read_tsv` holds text; ``inf`` stays infinite).

    Raises:
        InputError: a column is missing, a metric is not a number, or a subject is listed twice
            for one set and model.
    """
    missing = [c for c in (*ID_COLUMNS, *METRIC_COLUMNS) if c not in per_subject.columns]
    if missing:
        raise InputError("per-subject table", f"missing columns {missing}")
    table = per_subject.reset_index(drop=True).copy()
    for column in ID_COLUMNS:
        table[column] = table[column].astype(str)
    try:
        table[list(METRIC_COLUMNS)] = table[list(METRIC_COLUMNS)].apply(pd.to_numeric)
    except (TypeError, ValueError) as error:
        raise InputError("per-subject table", f"a metric is not a number: {error}") from error
    twice = table[table.duplicated(list(ID_COLUMNS))]
    if not twice.empty:
        raise InputError("per-subject table", "subjects listed more than once: "
                         f"{twice[list(ID_COLUMNS)].to_dict('records')}")
    return table


def check_inputs(per_subject: pd.DataFrame, catalog: pd.DataFrame
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both inputs checked and cleaned: :func:`check_per_subject` and :func:`check_catalog`."""
    return check_per_subject(per_subject), check_catalog(catalog)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if not pd.isna(value) else False


# ---------------------------------------------------------------- seeds


def by_configuration(per_subject: pd.DataFrame, catalog: pd.DataFrame
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One row per configuration: its seeds averaged (see the module docstring).

    Args:
        per_subject: the per-subject table (checked).
        catalog: the model catalog (checked); ``configuration`` optional.

    Returns:
        ``(per_subject, catalog, spread)``: the seed-averaged per-subject table (``model`` is
        the configuration), the catalog rows of the first seeds with ``seeds``, and
        :func:`cesynth.evaluation_tables.between_seed_sd` indexed by ``(set, model)``.

    Raises:
        InputError: a configuration without a catalog row of its own (its first seed).
    """
    if "configuration" in catalog.columns:
        names = [str(c) if not is_missing(c) else str(m)
                 for m, c in zip(catalog["model"], catalog["configuration"], strict=True)]
    else:
        names = catalog["model"].astype(str).tolist()
    configurations = dict(zip(catalog["model"], names, strict=True))
    orphans = sorted(set(names) - set(catalog["model"]))
    if orphans:
        raise InputError("model catalog", f"configurations without a row of their own (their "
                                          f"first seed): {orphans}")
    scored = per_subject[per_subject["model"].isin(configurations)]
    counts = pd.Series(names).value_counts()
    first = catalog[catalog["model"] == pd.Series(names, index=catalog.index)].copy()
    first["seeds"] = [int(counts[m]) for m in first["model"]]
    averaged = seed_average(scored, configurations)
    spread = between_seed_sd(scored, configurations).set_index(["set", "model"])
    return averaged, first, spread


# ---------------------------------------------------------------- row selection


def reference_row(catalog: pd.DataFrame) -> pd.Series:
    """The catalog's reference row (the final model).

    Args:
        catalog: a checked catalog (:func:`check_catalog`).

    Returns:
        The row.
    """
    return catalog[catalog["reference"]].iloc[0]


def differs_only_in(catalog: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows that differ from the reference in some of ``columns`` and in no other column.

    Args:
        catalog: the model catalog (checked here).
        columns: the columns a row may differ in.

    Returns:
        The matching rows, reference excluded, in catalog order.
    """
    catalog = check_catalog(catalog)
    reference = reference_row(catalog)
    compared = [c for c in catalog.columns if c not in IGNORED_COLUMNS]
    keep = []
    for _, row in catalog.iterrows():
        differing = {c for c in compared if not _same(row[c], reference[c])}
        keep.append(not row["reference"] and bool(differing) and differing <= set(columns))
    return catalog[keep]


def _same(a: Any, b: Any) -> bool:
    """Equal as numbers where both read as numbers, else as text; two missing values are equal."""
    if is_missing(a) or is_missing(b):
        return is_missing(a) and is_missing(b)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def is_missing(value: Any) -> bool:
    """None or NaN (text is never missing)."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def table_rows(catalog: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The catalog rows of one table, in display order, the reference last.

    Args:
        catalog: the model catalog (checked here).
        spec: the table.

    Returns:
        The rows; empty when no row but the reference qualifies (the table is not run).
    """
    catalog = check_catalog(catalog)
    rows = catalog[~catalog["reference"]] if spec.vary is None else differs_only_in(
        catalog, spec.vary)
    if spec.allowed is not None:
        rows = rows[rows[spec.label].isin(spec.allowed)]
        rows = rows.iloc[np.argsort([spec.allowed.index(v) for v in rows[spec.label]],
                                    kind="stable")]
    elif spec.label == "modalities":
        rows = rows.iloc[np.argsort([len(modality_key(v).split("+")) for v in rows["modalities"]],
                                    kind="stable")]
    if rows.empty:
        return rows
    return pd.concat([rows, catalog[catalog["reference"]]])


def modality_key(modalities: Any) -> str:
    """``T1w+T2w+adc`` -> ``adc+t1w+t2w``: order and case do not matter."""
    return "+".join(sorted(part.strip().lower() for part in str(modalities).split("+")))


def with_reference(catalog: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` followed by the catalog's reference row."""
    return pd.concat([rows, catalog[catalog["reference"]]])


# ---------------------------------------------------------------- statistics


def score_summary(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd of every metric per set and model, indexed by ``(set, model)``.

    Args:
        per_subject: the per-subject table.

    Returns:
        :func:`cesynth.evaluation_tables.summarise` by ``("set", "model")``, indexed by those
        columns.
    """
    return summarise(per_subject, by=("set", "model")).set_index(["set", "model"])


def model_score(summary: pd.DataFrame, key: str, model: str) -> tuple[float, float, int]:
    """One model's mean, sd and subject count for a metric key.

    Args:
        summary: :func:`score_summary` output.
        key: ``<set>_<region>_<metric>``, e.g. ``B_tumor_psnr``.
        model: the model name.

    Returns:
        ``(mean, sd, n)``: NaN, NaN, 0 when the model was not scored on that set.
    """
    set_name, column = key.split("_", 1)
    if (set_name, model) not in summary.index:
        return math.nan, math.nan, 0
    row = summary.loc[(set_name, model)]
    return float(row[f"{column}_mean"]), float(row[f"{column}_sd"]), int(row["n"])


def seed_sd(spread: pd.DataFrame, key: str, model: str) -> float:
    """A configuration's sd between seeds for a metric key (NaN with one seed or no score).

    Args:
        spread: :func:`by_configuration`'s spread, indexed by ``(set, model)``.
        key: ``<set>_<region>_<metric>``.
        model: the configuration.
    """
    set_name, column = key.split("_", 1)
    if (set_name, model) not in spread.index or f"{column}_seed_sd" not in spread.columns:
        return math.nan
    return float(spread.loc[(set_name, model), f"{column}_seed_sd"])


def paired_effect(per_subject: pd.DataFrame, key: str, model: str,
                  reference: str) -> dict[str, float]:
    """Paired t-test and effect size of ``model - reference`` on the subjects both were scored on.

    Args:
        per_subject: the per-subject table (checked).
        key: metric key, e.g. ``A_brain_psnr`` (the set selects the rows).
        model: the compared model.
        reference: the reference model.

    Returns:
        ``n`` (pairs), ``mean_difference`` (mean of ``model - reference``), ``cohen_dz``
        (mean difference / sample sd of the differences), ``t`` and ``p`` (two-sided,
        :func:`scipy.stats.ttest_rel`), ``test`` (``paired t``, or ``descriptive`` with
        fewer than :data:`~cesynth.evaluation_tables.MIN_TESTED_PAIRS` pairs: t and p NaN);
        all but ``n`` and ``test`` NaN with fewer than 2 pairs. A pair with a non-finite value
        (NaN, or the infinite PSNR of an exact prediction) is left out.
    """
    set_name, column = key.split("_", 1)
    rows = per_subject[per_subject["set"] == set_name]
    rows = rows[np.isfinite(rows[column].to_numpy(float))]
    pairs = len(set(rows["subject"][rows["model"] == model])
                & set(rows["subject"][rows["model"] == reference]))
    if pairs < 2:
        return {"n": pairs, "mean_difference": math.nan, "cohen_dz": math.nan, "t": math.nan,
                "p": math.nan, "test": DESCRIPTIVE}
    test = paired_ttest(rows, column, model, reference)
    tested = test["n"] >= MIN_TESTED_PAIRS
    # t = mean / (sd / sqrt(n)), so mean / sd = t / sqrt(n)
    return {"n": int(test["n"]), "mean_difference": float(test["mean_difference"]),
            "cohen_dz": float(test["t"]) / math.sqrt(test["n"]),
            "t": float(test["t"]) if tested else math.nan,
            "p": float(test["p"]) if tested else math.nan,
            "test": TESTED if tested else DESCRIPTIVE}


# ---------------------------------------------------------------- tables


def build_table(per_subject: pd.DataFrame, catalog: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """One table: a row per selected model with its scores, tests and the paper's values.

    Args:
        per_subject: the per-subject table.
        catalog: the model catalog.
        spec: the table.

    Returns:
        Columns ``model`` (the configuration), ``experiment``, the label column,
        ``reference``, ``seeds``, ``<set>_n``, ``<key>_mean``, ``<key>_sd`` (over patients)
        and ``<key>_seed_sd`` (between seeds) per metric key, ``<key>_n_pairs``,
        ``<key>_mean_difference``, ``<key>_cohen_dz``, ``<key>_t``, ``<key>_p``,
        ``<key>_p_holm`` and ``<key>_test`` per tested key (NaN on the reference row),
        ``holm_family``, ``paper_row`` and ``paper_<key>_mean``/``_sd`` for the paper's
        metrics. Empty (no columns) when the table is not run.
    """
    per_subject, catalog = check_per_subject(per_subject), check_catalog(catalog)
    per_subject, catalog, spread = by_configuration(per_subject, catalog)
    rows = table_rows(catalog, spec)
    if rows.empty:
        return pd.DataFrame()
    summary = score_summary(per_subject)
    reference = str(reference_row(catalog)["model"])
    table = pd.DataFrame([_table_record(row, spec, summary, spread, per_subject, reference)
                          for row in rows.to_dict("records")])
    counts = [f"{key}_n_pairs" for key in spec.tests]
    table[counts] = table[counts].astype("Int64")  # the reference row has none
    p_columns = [f"{key}_p" for key in spec.tests]
    adjusted = holm(table[p_columns].to_numpy(float).ravel()).reshape(len(table), -1)
    for index, key in enumerate(spec.tests):
        table.insert(table.columns.get_loc(f"{key}_p") + 1, f"{key}_p_holm", adjusted[:, index])
    tests = int(np.count_nonzero(~np.isnan(adjusted)))
    table.insert(table.columns.get_loc("paper_row"), "holm_family",
                 f"{spec.name}: {tests} tests")
    return table


def _table_record(row: Mapping[str, Any], spec: TableSpec, summary: pd.DataFrame,
                  spread: pd.DataFrame, per_subject: pd.DataFrame,
                  reference: str) -> dict[str, Any]:
    record: dict[str, Any] = {"model": row["model"], "experiment": row["experiment"],
                              spec.label: row[spec.label], "reference": row["reference"],
                              "seeds": int(row["seeds"])}
    for set_name in spec.sets:
        record[f"{set_name}_n"] = model_score(summary, f"{set_name}_brain_mae", row["model"])[2]
    for key in spec.metrics:
        record[f"{key}_mean"], record[f"{key}_sd"], _ = model_score(summary, key, row["model"])
        record[f"{key}_seed_sd"] = seed_sd(spread, key, row["model"])
    for key in spec.tests:
        effect = ({**dict.fromkeys(("n", "mean_difference", "cohen_dz", "t", "p"), math.nan),
                   "test": ""}
                  if row["reference"] else paired_effect(per_subject, key, row["model"], reference))
        record[f"{key}_n_pairs"] = effect.pop("n")
        record.update({f"{key}_{name}": value for name, value in effect.items()})
    paper_row = _paper_row(spec, row)
    record["paper_row"] = paper_row or ""
    values = PAPER_VALUES.get(spec.name, {}).get(paper_row or "", {})
    for key in paper_keys(spec):
        record[f"paper_{key}_mean"], record[f"paper_{key}_sd"] = values.get(key, (math.nan,) * 2)
    return record


def _paper_row(spec: TableSpec, row: Mapping[str, Any]) -> str | None:
    if row["reference"]:
        return PAPER_FINAL_ROW.get(spec.name)
    value = row[spec.label]
    key = modality_key(value) if spec.label == "modalities" else str(value)
    return PAPER_ROWS.get(spec.name, {}).get(key)


def paper_keys(spec: TableSpec) -> list[str]:
    """The table's metric keys that the paper reports, in the table's order.

    Args:
        spec: the table.

    Returns:
        The keys (empty for a table the paper does not have).
    """
    reported = {key for values in PAPER_VALUES.get(spec.name, {}).values() for key in values}
    return [key for key in spec.metrics if key in reported]


__all__ = [
    "CATALOG_COLUMNS", "FLOORS", "FULL_VARIANT", "IGNORED_COLUMNS", "PAPER_FINAL_ROW", "PAPER_ROWS",
    "PAPER_VALUES", "TABLES", "VARIANT_ORDER", "TableSpec", "build_table", "by_configuration",
    "check_catalog", "check_inputs", "check_per_subject", "differs_only_in", "is_missing",
    "modality_key", "model_score", "paired_effect", "paper_keys", "reference_row",
    "score_summary", "seed_sd", "table_rows", "with_reference",
]
