"""The paper's report: every table as Markdown beside the paper's values, and the writing of all
tables (TSV), figures (PNG) and the Markdown into one folder (:func:`write_paper_outputs`).

The tables are built by :mod:`cesynth.paper`, the figures drawn by :mod:`cesynth.paper_figures`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cesynth.evaluation_tables import DESCRIPTIVE, MIN_TESTED_PAIRS, format_mean_sd, with_seed_sd
from cesynth.io import atomic_path, write_tsv
from cesynth.paper import (
    PAPER_VALUES,
    TABLES,
    TableSpec,
    build_table,
    by_configuration,
    check_inputs,
    is_missing,
    paper_keys,
    reference_row,
)
from cesynth.paper_figures import FIGURE_TEXT, FIGURES

DIGITS = {"mae": 3, "psnr": 2, "ssim": 3}
"""Decimals per metric, as the paper prints them."""


# ---------------------------------------------------------------- Markdown


def paper_markdown(tables: Mapping[str, pd.DataFrame], reference: str,
                   figures: Mapping[str, Path | None] | None = None) -> str:
    """All tables as Markdown, ours beside the paper's, a line per table or figure not made.

    Args:
        tables: :func:`cesynth.paper.build_table` output per
            :class:`cesynth.paper.TableSpec` name (empty: not run).
        reference: the reference model's name.
        figures: figure name (:data:`FIGURE_TEXT` key) -> PNG path, or None when not drawn;
            linked by file name, so the Markdown sits beside them.

    Returns:
        The Markdown text.
    """
    parts = ["# The paper's tables and figures from this run", "",
             "Ours: one row per configuration, its seeds averaged per patient (`seeds`: how "
             "many; declared, never chosen): mean±sd over the subjects scored, then (±sd "
             "between seeds of the per-seed means) where a row has 2 or more seeds. Each row is "
             f"compared with the final model (`{reference}`) by a two-sided paired t-test on "
             "the seed-averaged scores of the subjects both were scored on: Δ is the mean "
             "paired difference (row - final), d_z = Δ / sd of the differences (Cohen's d_z), "
             "p the raw p-value with the number of pairs, p Holm the p-value Holm-adjusted "
             "within the table (the family: every test in that table). With "
             f"{MIN_TESTED_PAIRS - 1} or fewer pairs a comparison is descriptive (Δ and d_z, "
             "no test). \"paper\" columns: the paper's values on its UCLA data (not "
             "public), for reference only.", ""]
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
    heads = ["model", spec.label, "seeds", *(f"n ({s})" for s in spec.sets),
             *(_heading(k) for k in spec.metrics)]
    for key in spec.tests:
        heads += [f"Δ {_heading(key)}", "d_z", "p (pairs)", "p Holm"]
    if keys:
        heads += ["paper row", *(f"paper {_heading(k)}" for k in keys)]
    seeds = pd.to_numeric(table["seeds"], errors="coerce").fillna(1)
    note = ("One seed per configuration: spread between seeds n/a." if seeds.max() < 2
            else "Seeds averaged; (±x): sd between seeds.")
    lines = [f"## {spec.title}", "", f"Holm family: {table['holm_family'].iloc[0]} (this "
             f"table). {note}", "", _md_row(heads), _md_row(["---"] * len(heads))]
    lines += [_md_row(_table_cells(spec, row, keys)) for row in table.to_dict("records")]
    return [*lines, "", *_unmatched_paper_rows(spec, table)]


def _table_cells(spec: TableSpec, row: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    model = f"**{row['model']}** (final)" if row["reference"] else str(row["model"])
    seeds = int(row["seeds"])
    cells = [model, str(row[spec.label]), str(seeds), *(str(row[f"{s}_n"]) for s in spec.sets)]
    cells += [with_seed_sd(format_mean_sd(row[f"{k}_mean"], row[f"{k}_sd"], _digits(k)),
                           row[f"{k}_seed_sd"], seeds, _digits(k)) for k in spec.metrics]
    for key in spec.tests:
        descriptive = row[f"{key}_test"] == DESCRIPTIVE
        cells += [_signed(row[f"{key}_mean_difference"], _digits(key)),
                  _number(row[f"{key}_cohen_dz"], 2),
                  _descriptive(row[f"{key}_n_pairs"]) if descriptive
                  else _p_cell(row[f"{key}_p"], row[f"{key}_n_pairs"]),
                  "" if descriptive else _p_only(row[f"{key}_p_holm"])]
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
    return "n/a" if is_missing(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int) -> str:
    return "n/a" if is_missing(value) else f"{value:+.{digits}f}"


def _p_only(p: float) -> str:
    if is_missing(p):
        return "n/a"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _descriptive(pairs: float) -> str:
    return DESCRIPTIVE if is_missing(pairs) else f"{DESCRIPTIVE} ({int(pairs)})"


def _p_cell(p: float, pairs: float) -> str:
    if is_missing(p):
        return "n/a" if is_missing(pairs) else f"n/a ({int(pairs)})"
    text = f"{p:.1e}" if p < 0.001 else f"{p:.3f}"
    return f"{text} ({int(pairs)})"


# ---------------------------------------------------------------- entry point


def write_paper_outputs(per_subject: pd.DataFrame, catalog: pd.DataFrame,
                        out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the paper's tables (TSV, Markdown) and Figs. 7, 9, 10 from evaluation results.

    Writes ``<table>.tsv`` for each :data:`cesynth.paper.TABLES` entry with rows (``table1``,
    ``table2``, ``table3``, ``table5``, ``floors``), each :data:`cesynth.paper_figures.FIGURES`
    PNG that has data, and ``paper_tables.md`` (every table beside the paper's values, the
    figures, and a line per table or figure not made). A table or figure not made this time has
    its file of an earlier call removed, so the folder shows one run.

    Args:
        per_subject: the per-subject table (see :mod:`cesynth.paper`).
        catalog: the model catalog (see :mod:`cesynth.paper`).
        out_dir: the folder to write into (created if needed).

    Returns:
        File stem (``table1``, ``fig7_loss_weights``, ``paper_tables``, ...) -> path, for what
        was written.

    Raises:
        InputError: the inputs break the contract in :mod:`cesynth.paper`.
    """
    per_subject, catalog = check_inputs(per_subject, catalog)
    out = Path(out_dir)
    written: dict[str, Path] = {}
    tables = {spec.name: build_table(per_subject, catalog, spec) for spec in TABLES}
    # the figures show configurations too: each one's seeds averaged per patient
    per_subject, catalog, _ = by_configuration(per_subject, catalog)
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


__all__ = ["DIGITS", "paper_markdown", "write_paper_outputs"]
