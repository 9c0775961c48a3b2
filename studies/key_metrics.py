"""The study's key numbers as Markdown tables (studies/RESULTS.md), from a run's evaluation summary.

    python studies/key_metrics.py results-study/eval/summary.tsv

Two tables, one row per evaluated model: the paper's metrics (Set A test brain PSNR, Set B brain
and tumor PSNR, tumor SSIM) and the radiologist's endpoints on Set B (enhancement AUC and Dice,
lesion sensitivity, false-positive components per patient), each as mean with its seeded 95 %
bootstrap interval over subjects (`cesynth.evaluation_tables`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

PAPER_METRICS = (("A", "brain_psnr", "Set A test brain PSNR (dB)"),
                 ("B", "brain_psnr", "Set B brain PSNR (dB)"),
                 ("B", "tumor_psnr", "Set B tumor PSNR (dB)"),
                 ("B", "tumor_ssim", "Set B tumor SSIM"))
ENDPOINTS = (("B", "enh_auc", "enhancement AUC"),
             ("B", "enh_dice", "enhancing-region Dice"),
             ("B", "lesion_sensitivity", "lesions found"),
             ("B", "false_positives", "false-positive components / patient"),
             ("A", "false_positives", "Set A false positives / patient"))


def cell(summary: pd.DataFrame, model: str, set_name: str, metric: str) -> str:
    """``mean [low, high]`` of one metric, or n/a."""
    rows = summary[(summary["model"] == model) & (summary["set"] == set_name)]
    if rows.empty or f"{metric}_mean" not in rows or pd.isna(rows[f"{metric}_mean"].iloc[0]):
        return "n/a"
    row = rows.iloc[0]
    digits = 2 if metric.endswith("psnr") or metric == "false_positives" else 3
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
        print(f"usage: {argv[0]} SUMMARY_TSV", file=sys.stderr)
        return 2
    summary = pd.read_csv(Path(argv[1]), sep="\t", na_values=["n/a"])
    print(table(summary, PAPER_METRICS), end="\n\n")
    print(table(summary, ENDPOINTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
