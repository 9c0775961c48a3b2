"""The paper's tables and figures from evaluation results: Tables I-III and V, Figs. 4, 7, 9, 10.

Inputs
======

``per_subject`` (one row per scored subject and evaluated model), as
:func:`cesynth.evaluate.read_subject_metrics` returns it:

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
  the text ``true``/``false`` as a TSV gives it).

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

Each cell is ``mean±sd`` over the subjects a model was scored on (sample sd,
:func:`cesynth.evaluate.summarise`, :func:`cesynth.evaluate.format_mean_sd`). Each row is compared
with the reference by a two-sided paired t-test (:func:`cesynth.evaluate.paired_ttest`) on the
subjects both were scored on with finite values, for brain PSNR in Set A and tumor PSNR in Set B
(Table II also brain PSNR in Set B), with the effect size: the mean paired difference
``row - reference`` and Cohen's ``d_z = mean difference / sd of the differences``
(``= t / sqrt(n)``). Fewer than 2 pairs give NaN.

The paper's own values (:data:`PAPER_VALUES`, its non-public UCLA data) are printed beside ours for
reference; they are not a target the phantom can reach.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cesynth.evaluate import ID_COLUMNS, METRIC_COLUMNS, format_mean_sd, paired_ttest, summarise
from cesynth.io import InputError, atomic_path, load_nifti, write_tsv

CATALOG_COLUMNS = ("model", "experiment", "variant", "architecture", "modalities", "l1", "l3",
                   "delta", "seed", "reference")
"""Columns the catalog must have (it may have more; they take part in the selection)."""
IGNORED_COLUMNS = ("model", "experiment", "reference")
"""Catalog columns that row selection does not compare."""
FLOORS = ("floor-t1", "floor-regression")
"""Architectures of the baselines that need no deep model."""
FULL_VARIANT = "full"
VARIANT_ORDER = ("zero-T1w", "zero-T2w", "zero-adc", "zero-T2w-adc", "cascade-T2w", "cascade-adc",
                 "cascade-T2w-adc", FULL_VARIANT)
"""Order of the missing-input variants in Fig. 10 (the paper's panels b-g); others follow."""

DIGITS = {"mae": 3, "psnr": 2, "ssim": 3}
"""Decimals per metric, as the paper prints them."""

PaperValue = tuple[float, float]
"""A paper cell: (mean, sd)."""

# Metric keys are "<set>_<region>_<metric>": "A_brain_psnr" is Set A's brain PSNR.
PAPER_VALUES: dict[str, dict[str, dict[str, PaperValue]]] = {
    # Paper Table I: test set A, whole-brain region; MAE, PSNR (dB), SSIM. Ref [21]'s MAE is
    # printed "N/A" and left out.
    "table1": {
        "Ref [21]": {"A_brain_psnr": (22.97, 1.16), "A_brain_ssim": (0.872, 0.031)},
        "U-Net (2D)": {"A_brain_mae": (0.033, 0.005), "A_brain_psnr": (26.86, 1.05),
                       "A_brain_ssim": (0.905, 0.038)},
        "U-Net (3D)": {"A_brain_mae": (0.032, 0.004), "A_brain_psnr": (27.21, 1.18),
                       "A_brain_ssim": (0.908, 0.038)},
        "Ours (2D)": {"A_brain_mae": (0.030, 0.005), "A_brain_psnr": (27.87, 1.30),
                      "A_brain_ssim": (0.915, 0.039)},
        "Ours (3D)": {"A_brain_mae": (0.029, 0.005), "A_brain_psnr": (28.24, 1.26),
                      "A_brain_ssim": (0.923, 0.041)},
    },
    # Paper Table II: test set B. Its header (extracted text: "PSNR SSIM / Brain Tumor Brain")
    # is read as three columns: brain PSNR, tumor PSNR, brain SSIM; no MAE and no tumor SSIM.
    # Ambiguous: Ref [21]'s brain values repeat its Table I (set A) values exactly; the paper
    # prints them so. Rows are spelled "UNet" here, as the paper does in this table.
    "table2": {
        "Ref [21]": {"B_brain_psnr": (22.97, 1.16), "B_tumor_psnr": (20.15, 4.70),
                     "B_brain_ssim": (0.872, 0.031)},
        "UNet (2D)": {"B_brain_psnr": (26.44, 1.40), "B_tumor_psnr": (18.45, 2.22),
                      "B_brain_ssim": (0.896, 0.022)},
        "UNet (3D)": {"B_brain_psnr": (26.79, 1.26), "B_tumor_psnr": (18.89, 2.38),
                      "B_brain_ssim": (0.899, 0.022)},
        "Ours (2D)": {"B_brain_psnr": (27.22, 1.21), "B_tumor_psnr": (19.64, 2.59),
                      "B_brain_ssim": (0.903, 0.023)},
        "Ours (3D)": {"B_brain_psnr": (27.62, 1.34), "B_tumor_psnr": (21.2, 2.36),
                      "B_brain_ssim": (0.909, 0.023)},
    },
    # Paper Table III: input modalities; A-brain PSNR and SSIM, B-brain PSNR and SSIM, B-tumor
    # PSNR. The extracted text prints the last B-tumor cell as "21.242.36"; read as 21.2±2.36,
    # the same model's value in Table II.
    "table3": {
        "T1": {"A_brain_psnr": (27.4, 1.28), "A_brain_ssim": (0.914, 0.040),
               "B_brain_psnr": (26.7, 1.23), "B_brain_ssim": (0.898, 0.022),
               "B_tumor_psnr": (19.8, 2.32)},
        "T1+T2": {"A_brain_psnr": (27.9, 1.24), "A_brain_ssim": (0.920, 0.040),
                  "B_brain_psnr": (27.3, 1.27), "B_brain_ssim": (0.905, 0.023),
                  "B_tumor_psnr": (20.8, 2.30)},
        "T1+T2+ADC": {"A_brain_psnr": (28.24, 1.26), "A_brain_ssim": (0.923, 0.041),
                      "B_brain_psnr": (27.62, 1.34), "B_brain_ssim": (0.909, 0.023),
                      "B_tumor_psnr": (21.2, 2.36)},
    },
    # Paper Table V: ablations (Model-A..D against the final model). Ambiguous: (1) in the
    # extracted text this table has no "TABLE V" label (the state-of-the-art table is labelled
    # IV, while the text calls both "Table V"); it is the table captioned "comparison between
    # the final model and four degraded model architectures". (2) Its metric is not named; the
    # columns A-Brain, B-Brain, B-Tumor are read as PSNR (dB), since the final model's row equals
    # its PSNR in Tables I and II. "27.26x1.28" and "27.20£1.22" are read with "±".
    "table5": {
        "Model-A": {"A_brain_psnr": (27.68, 1.31), "B_brain_psnr": (27.26, 1.28),
                    "B_tumor_psnr": (20.63, 2.46)},
        "Model-B": {"A_brain_psnr": (26.42, 1.12), "B_brain_psnr": (26.32, 1.20),
                    "B_tumor_psnr": (19.54, 2.38)},
        "Model-C": {"A_brain_psnr": (27.20, 1.22), "B_brain_psnr": (27.04, 1.19),
                    "B_tumor_psnr": (20.39, 2.44)},
        "Model-D": {"A_brain_psnr": (27.36, 1.20), "B_brain_psnr": (27.08, 1.18),
                    "B_tumor_psnr": (20.68, 2.32)},
        "Final-Model": {"A_brain_psnr": (28.24, 1.26), "B_brain_psnr": (27.62, 1.34),
                        "B_tumor_psnr": (21.20, 2.36)},
    },
}
"""The paper's values (mean, sd) on its UCLA data, per table, paper row and metric key."""

PAPER_ROWS: dict[str, dict[str, str]] = {
    "table1": {"unet2d": "U-Net (2D)", "unet3d": "U-Net (3D)", "hrfcn2d": "Ours (2D)",
               "hrfcn3d": "Ours (3D)"},
    "table2": {"unet2d": "UNet (2D)", "unet3d": "UNet (3D)", "hrfcn2d": "Ours (2D)",
               "hrfcn3d": "Ours (3D)"},
    "table3": {"t1w": "T1", "t1w+t2w": "T1+T2", "adc+t1w+t2w": "T1+T2+ADC"},
    "table5": {"model_a": "Model-A", "model_b": "Model-B", "model_c": "Model-C",
               "model_d": "Model-D"},
}
"""Paper row of a catalog value of the table's varied column (modalities: lower-case, sorted)."""
PAPER_FINAL_ROW = {"table1": "Ours (3D)", "table2": "Ours (3D)", "table3": "T1+T2+ADC",
                   "table5": "Final-Model"}
"""Paper row of the reference (the final model) per table."""


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
"""The tables :func:`write_paper_outputs` makes, in order."""

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
        per_subject: :func:`cesynth.evaluate.read_subject_metrics` output.

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


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if not pd.isna(value) else False


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
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _missing(value: Any) -> bool:
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
        rows = rows.iloc[np.argsort([len(_modality_key(v).split("+")) for v in rows["modalities"]],
                                    kind="stable")]
    if rows.empty:
        return rows
    return pd.concat([rows, catalog[catalog["reference"]]])


def _modality_key(modalities: Any) -> str:
    """``T1w+T2w+adc`` -> ``adc+t1w+t2w``: order and case do not matter."""
    return "+".join(sorted(part.strip().lower() for part in str(modalities).split("+")))


def _with_reference(catalog: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([rows, catalog[catalog["reference"]]])


# ---------------------------------------------------------------- statistics


def score_summary(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd of every metric per set and model, indexed by ``(set, model)``.

    Args:
        per_subject: the per-subject table.

    Returns:
        :func:`cesynth.evaluate.summarise` by ``("set", "model")``, indexed by those columns.
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
        :func:`scipy.stats.ttest_rel`); all but ``n`` NaN with fewer than 2 pairs. A pair with
        a non-finite value (NaN, or the infinite PSNR of an exact prediction) is left out.
    """
    set_name, column = key.split("_", 1)
    rows = per_subject[per_subject["set"] == set_name]
    rows = rows[np.isfinite(rows[column].to_numpy(float))]
    pairs = len(set(rows["subject"][rows["model"] == model])
                & set(rows["subject"][rows["model"] == reference]))
    if pairs < 2:
        return {"n": pairs, "mean_difference": math.nan, "cohen_dz": math.nan, "t": math.nan,
                "p": math.nan}
    test = paired_ttest(rows, column, model, reference)
    # t = mean / (sd / sqrt(n)), so mean / sd = t / sqrt(n)
    return {"n": int(test["n"]), "mean_difference": float(test["mean_difference"]),
            "cohen_dz": float(test["t"]) / math.sqrt(test["n"]), "t": float(test["t"]),
            "p": float(test["p"])}


# ---------------------------------------------------------------- tables


def build_table(per_subject: pd.DataFrame, catalog: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """One table: a row per selected model with its scores, tests and the paper's values.

    Args:
        per_subject: the per-subject table.
        catalog: the model catalog.
        spec: the table.

    Returns:
        Columns ``model``, ``experiment``, the label column, ``reference``, ``<set>_n``,
        ``<key>_mean`` and ``<key>_sd`` per metric key, ``<key>_n_pairs``,
        ``<key>_mean_difference``, ``<key>_cohen_dz``, ``<key>_t``, ``<key>_p`` per tested key
        (NaN on the reference row), ``paper_row`` and ``paper_<key>_mean``/``_sd`` for the
        paper's metrics. Empty (no columns) when the table is not run.
    """
    per_subject, catalog = check_per_subject(per_subject), check_catalog(catalog)
    rows = table_rows(catalog, spec)
    if rows.empty:
        return pd.DataFrame()
    summary = score_summary(per_subject)
    reference = str(reference_row(catalog)["model"])
    table = pd.DataFrame([_table_record(row, spec, summary, per_subject, reference)
                          for row in rows.to_dict("records")])
    counts = [f"{key}_n_pairs" for key in spec.tests]
    table[counts] = table[counts].astype("Int64")  # the reference row has none
    return table


def _table_record(row: Mapping[str, Any], spec: TableSpec, summary: pd.DataFrame,
                  per_subject: pd.DataFrame, reference: str) -> dict[str, Any]:
    record: dict[str, Any] = {"model": row["model"], "experiment": row["experiment"],
                              spec.label: row[spec.label], "reference": row["reference"]}
    for set_name in spec.sets:
        record[f"{set_name}_n"] = model_score(summary, f"{set_name}_brain_mae", row["model"])[2]
    for key in spec.metrics:
        record[f"{key}_mean"], record[f"{key}_sd"], _ = model_score(summary, key, row["model"])
    for key in spec.tests:
        effect = (dict.fromkeys(("n", "mean_difference", "cohen_dz", "t", "p"), math.nan)
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
    key = _modality_key(value) if spec.label == "modalities" else str(value)
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


# ---------------------------------------------------------------- Markdown


def paper_markdown(tables: Mapping[str, pd.DataFrame], reference: str,
                   figures: Mapping[str, Path | None] | None = None) -> str:
    """All tables as Markdown, ours beside the paper's, a line per table or figure not made.

    Args:
        tables: :func:`build_table` output per :class:`TableSpec` name (empty: not run).
        reference: the reference model's name.
        figures: figure name (:data:`FIGURE_TEXT` key) -> PNG path, or None when not drawn;
            linked by file name, so the Markdown sits beside them.

    Returns:
        The Markdown text.
    """
    parts = ["# The paper's tables and figures from this run", "",
             f"Ours: mean±sd over the subjects scored. Each row is compared with the final model "
             f"(`{reference}`) by a two-sided paired t-test on the subjects both were scored on: "
             "Δ is the mean paired difference (row - final), d_z = Δ / sd of the differences "
             "(Cohen's d_z), p the p-value with the number of pairs. \"paper\" columns: the "
             "paper's values on its UCLA data (not public), for reference only.", ""]
    not_run = []
    for spec in TABLES:
        table = tables.get(spec.name, pd.DataFrame())
        if table.empty:
            not_run.append(f"- {spec.title}: not run ({_why_not_run(spec)}).")
        else:
            parts += _table_markdown(spec, table)
    parts += _figures_markdown(figures or {})
    if not_run:
        parts += ["## Not run", "", *not_run, ""]
    return "\n".join(parts)


def _why_not_run(spec: TableSpec) -> str:
    values = f" with {spec.label} in {{{', '.join(spec.allowed)}}}" if spec.allowed else ""
    if spec.vary is None:
        return f"no evaluated model{values}"
    return (f"no evaluated model differs from the final model only in "
            f"{', '.join(spec.vary)}{values}")


def _table_markdown(spec: TableSpec, table: pd.DataFrame) -> list[str]:
    keys = paper_keys(spec)
    heads = ["model", spec.label, *(f"n ({s})" for s in spec.sets),
             *(_heading(k) for k in spec.metrics)]
    for key in spec.tests:
        heads += [f"Δ {_heading(key)}", "d_z", "p (pairs)"]
    if keys:
        heads += ["paper row", *(f"paper {_heading(k)}" for k in keys)]
    lines = [f"## {spec.title}", "", _md_row(heads), _md_row(["---"] * len(heads))]
    lines += [_md_row(_table_cells(spec, row, keys)) for row in table.to_dict("records")]
    return [*lines, "", *_unmatched_paper_rows(spec, table)]


def _table_cells(spec: TableSpec, row: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    model = f"**{row['model']}** (final)" if row["reference"] else str(row["model"])
    cells = [model, str(row[spec.label]), *(str(row[f"{s}_n"]) for s in spec.sets)]
    cells += [format_mean_sd(row[f"{k}_mean"], row[f"{k}_sd"], _digits(k)) for k in spec.metrics]
    for key in spec.tests:
        cells += [_signed(row[f"{key}_mean_difference"], _digits(key)),
                  _number(row[f"{key}_cohen_dz"], 2), _p_cell(row[f"{key}_p"],
                                                              row[f"{key}_n_pairs"])]
    if keys:
        cells.append(row["paper_row"] or "-")
        cells += [format_mean_sd(row[f"paper_{k}_mean"], row[f"paper_{k}_sd"], _digits(k))
                  for k in keys]
    return cells


def _unmatched_paper_rows(spec: TableSpec, table: pd.DataFrame) -> list[str]:
    unmatched = [name for name in PAPER_VALUES.get(spec.name, {})
                 if name not in set(table["paper_row"])]
    if not unmatched:
        return []
    items = []
    for name in unmatched:
        values = PAPER_VALUES[spec.name][name]
        cells = ", ".join(f"{_heading(k)} {format_mean_sd(*values[k], _digits(k))}"
                          for k in paper_keys(spec) if k in values)
        items.append(f"{name} ({cells})")
    return [f"Paper rows with no counterpart here: {'; '.join(items)}.", ""]


def _figures_markdown(figures: Mapping[str, Path | None]) -> list[str]:
    lines = ["## Figures", ""]
    for name, (caption, rows) in FIGURE_TEXT.items():
        path = figures.get(name)
        if path is not None:
            lines += [f"![{caption}]({Path(path).name})", ""]
        else:
            lines += [f"- {caption}: not drawn (no scored model differs from the final model "
                      f"{rows}).", ""]
    return lines


def _heading(key: str) -> str:
    set_name, region, metric = key.split("_")
    return f"{set_name} {region} {metric.upper()}{' (dB)' if metric == 'psnr' else ''}"


def _digits(key: str) -> int:
    return DIGITS[key.rsplit("_", 1)[1]]


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _number(value: float, digits: int) -> str:
    return "n/a" if _missing(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int) -> str:
    return "n/a" if _missing(value) else f"{value:+.{digits}f}"


def _p_cell(p: float, pairs: float) -> str:
    if _missing(p):
        return "n/a" if _missing(pairs) else f"n/a ({int(pairs)})"
    text = f"{p:.1e}" if p < 0.001 else f"{p:.3f}"
    return f"{text} ({int(pairs)})"


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


def _prepare(per_subject: pd.DataFrame, catalog: pd.DataFrame
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    return check_per_subject(per_subject), check_catalog(catalog)


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
    per_subject, catalog = _prepare(per_subject, catalog)
    keys = ("A_brain_psnr", "B_tumor_psnr")
    frame = _scored(per_subject, _with_reference(catalog, differs_only_in(catalog, ("l1", "l3"))),
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
    per_subject, catalog = _prepare(per_subject, catalog)
    keys = ("A_brain_psnr", "B_tumor_psnr")
    rows = _with_reference(catalog, differs_only_in(catalog, ("delta",)))
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

    Groups: the reference experiment's other variants (:data:`VARIANT_ORDER`), then models that
    differ from the reference only in ``modalities`` (trained on fewer inputs), then the
    reference. Error bars: sd over subjects.

    Args:
        per_subject: the per-subject table.
        catalog: the model catalog.
        out_png: the PNG to write (atomically).

    Returns:
        ``out_png``, or None (nothing written) when there is no such row with a score.
    """
    per_subject, catalog = _prepare(per_subject, catalog)
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
    fewer = fewer.iloc[np.argsort([len(_modality_key(m).split("+")) for m in fewer["modalities"]],
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
"""The figures :func:`write_paper_outputs` draws, by file stem."""


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
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if panel is None:
                ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes)
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


# ---------------------------------------------------------------- entry point


def write_paper_outputs(per_subject: pd.DataFrame, catalog: pd.DataFrame,
                        out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the paper's tables (TSV, Markdown) and Figs. 7, 9, 10 from evaluation results.

    Writes ``<table>.tsv`` for each :data:`TABLES` entry with rows (``table1``, ``table2``,
    ``table3``, ``table5``, ``floors``), each :data:`FIGURES` PNG that has data, and
    ``paper_tables.md`` (every table beside the paper's values, the figures, and a line per
    table or figure not made). A table or figure not made this time has its file of an earlier
    call removed, so the folder shows one run.

    Args:
        per_subject: the per-subject table (see the module docstring).
        catalog: the model catalog (see the module docstring).
        out_dir: the folder to write into (created if needed).

    Returns:
        File stem (``table1``, ``fig7_loss_weights``, ``paper_tables``, ...) -> path, for what
        was written.

    Raises:
        InputError: the inputs break the contract in the module docstring.
    """
    per_subject, catalog = _prepare(per_subject, catalog)
    out = Path(out_dir)
    written: dict[str, Path] = {}
    tables = {spec.name: build_table(per_subject, catalog, spec) for spec in TABLES}
    for name, table in tables.items():
        path = out / f"{name}.tsv"
        if table.empty:
            path.unlink(missing_ok=True)
        else:
            written[name] = write_tsv(table, path)
    figures: dict[str, Path | None] = {}
    for name, plot in FIGURES.items():
        path = out / f"{name}.png"
        figures[name] = plot(per_subject, catalog, path)
        if figures[name] is None:
            path.unlink(missing_ok=True)
        else:
            written[name] = path
    markdown = paper_markdown(tables, str(reference_row(catalog)["model"]), figures)
    with atomic_path(out / "paper_tables.md") as tmp:
        tmp.write_text(markdown)
    written["paper_tables"] = out / "paper_tables.md"
    return written


__all__ = [
    "CATALOG_COLUMNS", "ERROR_VMAX", "FIGURES", "FIGURE_TEXT", "FLOORS", "IGNORED_COLUMNS",
    "PAPER_FINAL_ROW", "PAPER_ROWS", "PAPER_VALUES", "TABLES", "VARIANT_ORDER", "TableSpec",
    "build_table", "check_catalog", "check_per_subject", "differs_only_in", "model_score",
    "paired_effect", "paper_keys", "paper_markdown", "plot_delta", "plot_loss_weights",
    "plot_missing_inputs", "reference_row", "score_summary", "synthesis_panel", "table_rows",
    "write_paper_outputs",
]
