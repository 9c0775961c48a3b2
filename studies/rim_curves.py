"""Study part 6's curves (issue 23): each knob against the within-lesion endpoints, on validation.

    python studies/rim_curves.py results-rimcurves/eval studies/part6-rim-curves

reads ``<eval>/validation/summary.tsv`` (the validation subjects' threshold-free scores: what
chooses) and writes ``curves.png`` (one panel per knob: within-lesion AUC and recovered contrast
share on the validation patients, the floors as lines) and ``curves.md`` (the same numbers). The
reported sets are not read here: only the recipe chosen on these curves is reported, from
``<eval>/summary.tsv``, beside the paper's recipe.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

REFERENCE = "default"
CURVES = {  # knob: (axis label, the final model's value, {model: value})
    "capacity": ("width multiplier", 0.125, {"capacity-0p25": 0.25}),
    "depth": ("ResBlocks per module", 1, {"depth-2": 2}),
    "schedule": ("stage-1 epochs", 16, {"schedule32": 32}),
    "subjects": ("training patients (120 patches per epoch)", 5,
                 {"subjects2": 2, "subjects3": 3}),
    "lesionshare": ("share of patches drawn through enhancement", 0.0,
                    {"lesionshare-0p5": 0.5, "lesionshare-1": 1.0}),
}
ENDPOINTS = (("enh_lesion_auc", "within-lesion AUC"),
             ("enh_recovered_share", "recovered contrast share"),
             ("enh_core_auc", "core AUC (rim vs necrotic core)"),
             ("enh_core_recovered_share", "recovered core contrast share"))
FLOORS = ("floor-t1", "floor-regression")
COLUMNS = ("enh_lesion_auc", "enh_recovered_share", "enh_core_auc",
           "enh_core_recovered_share", "brain_psnr")


def curve_points(summary: pd.DataFrame, knob: str) -> pd.DataFrame:
    """The knob's points that exist in ``summary`` (model, value), the final model included."""
    _, reference_value, points = CURVES[knob]
    rows = [(REFERENCE, reference_value), *points.items()]
    found = set(summary["model"])
    return pd.DataFrame([r for r in rows if r[0] in found], columns=["model", "value"]
                        ).sort_values("value")


def mean_of(summary: pd.DataFrame, model: str, metric: str) -> float:
    rows = summary[summary["model"] == model]
    column = f"{metric}_mean"
    return float(rows[column].iloc[0]) if len(rows) and column in rows else float("nan")


def plot_curves(validation: pd.DataFrame, out: Path) -> Path:
    size = (3.2 * len(CURVES), 2.75 * len(ENDPOINTS))
    figure, axes = plt.subplots(len(ENDPOINTS), len(CURVES), figsize=size, squeeze=False)
    for column, knob in enumerate(CURVES):
        points = curve_points(validation, knob)
        for row, (metric, title) in enumerate(ENDPOINTS):
            axis = axes[row][column]
            values = [mean_of(validation, m, metric) for m in points["model"]]
            axis.plot(points["value"], values, "o-", color="C0", label="model")
            for floor, style in zip(FLOORS, ("--", ":"), strict=True):
                axis.axhline(mean_of(validation, floor, metric), color="grey", linestyle=style,
                             label=floor)
            axis.set_xlabel(CURVES[knob][0], fontsize=8)
            axis.set_ylabel(title if column == 0 else "", fontsize=8)
            axis.set_title(knob if row == 0 else "", fontsize=9)
            axis.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Validation patients (selection only): one seed per point", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def curve_table(validation: pd.DataFrame) -> str:
    heads = [f"validation {metric}" for metric in COLUMNS]
    lines = ["| curve | model | value | " + " | ".join(heads) + " |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    rows = [(knob, m, v) for knob in CURVES for m, v in curve_points(validation, knob).values]
    rows += [("floor", floor, "") for floor in FLOORS]
    for knob, model, value in rows:
        cells = [f"{mean_of(validation, model, metric):.3f}" for metric in COLUMNS]
        lines.append(f"| {knob} | `{model}` | {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    eval_dir, out_dir = Path(argv[0]), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    validation = pd.read_csv(eval_dir / "validation" / "summary.tsv", sep="\t")
    plot_curves(validation, out_dir / "curves.png")
    (out_dir / "curves.md").write_text(curve_table(validation))
    print(out_dir / "curves.png", out_dir / "curves.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
