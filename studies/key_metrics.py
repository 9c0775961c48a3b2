"""The study's key numbers as Markdown tables (studies/RESULTS.md), from a run's evaluation.

    python studies/key_metrics.py results-study/eval/summary.tsv
    python studies/key_metrics.py results-study/eval/configurations.tsv

Two tables, one row per evaluated model (``summary.tsv``) or per configuration with its seeds
averaged (``configurations.tsv``): the paper's metrics (Set A test brain PSNR, Set B brain and
tumor PSNR, tumor SSIM) and the endpoints on Set B whose truth is where the agent is (brain-wide
and within-lesion AUC, the recovered contrast share, lesions found, non-enhancing lesions called,
false-positive components per patient). ``summary.tsv`` cells are the mean with its seeded 95 %
bootstrap interval over subjects; ``configurations.tsv`` cells are the mean +- sd over patients
(of the seed-averaged score) and, in parentheses, the sd between seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

PAPER_METRICS = (("A", "brain_psnr", "Set A test brain PSNR (dB)"),
                 ("B", "brain_psnr", "Set B brain PSNR (dB)"),
                 ("B", "tumor_psnr", "Set B tumor PSNR (dB)"),
                 ("B", "tumor_ssim", "Set B tumor SSIM"))
ENDPOINTS = (("B", "enh_auc", "brain-wide AUC"),
             ("B", "enh_lesion_auc", "within-lesion AUC"),
             ("B", "enh_recovered_share", "recovered contrast share"),
             ("B", "lesion_sensitivity", "lesions found"),
             ("B", "nonenhancing_called", "non-enhancing lesions called / patient"),
             ("B", "false_positives", "false-positive components / patient"),
             ("A", "false_positives", "Set A false positives / patient"))


def _digits(metric: str) -> int:
    return 2 if metric.endswith("psnr") or metric in ("false_positives",
                                                       "nonenhancing_called") else 3


def cell(summary: pd.DataFrame, model: str, set_name: str, metric: str) -> str:
    """One metric of one model or configuration and set, or n/a."""
    rows = summary[(summary["model"] == model) & (summary["set"] == set_name)]
    if rows.empty or f"{metric}_mean" not in rows or pd.isna(rows[f"{metric}_mean"].iloc[0]):
        return "n/a"
    row, digits = rows.iloc[0], _digits(metric)
    if "seeds" in summary:
        seed_sd = row.get(f"{metric}_seed_sd")
        between = "n/a" if pd.isna(seed_sd) else f"{seed_sd:.{digits}f}"
        spread = "n/a" if pd.isna(row[f"{metric}_sd"]) else f"{row[f'{metric}_sd']:.{digits}f}"
        return f"{row[f'{metric}_mean']:.{digits}f} ± {spread} ({between})"
    return (f"{row[f'{metric}_mean']:.{digits}f} [{row[f'{metric}_ci_low']:.{digits}f}, "
            f"{row[f'{metric}_ci_high']:.{digits}f}]")


def table(summary: pd.DataFrame, columns: tuple[tuple[str, str, str], ...]) -> str:
    lines = ["| model | " + " | ".join(title for _, _, title in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for model in summary["model"].drop_duplicates():
        cells = [cell(summary, model, set_name, metric) for set_name, metric, _ in columns]
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} SUMMARY_OR_CONFIGURATIONS_TSV", file=sys.stderr)
        return 2
    summary = pd.read_csv(Path(argv[1]), sep="\t", na_values=["n/a"])
    print(table(summary, PAPER_METRICS), end="\n\n")
    print(table(summary, ENDPOINTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
