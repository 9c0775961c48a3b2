"""The real-cohort run of issue 25 (studies/RESULTS.md, "Real BraTS cases"): the tables and the
learning curve from a finished `config/profiles/brats.yaml` run, and the predict-vs-workflow parity.

    python studies/real_brats.py tables results-brats studies/real-brats
    python studies/real_brats.py parity results-brats brats/bids studies/real-brats [EXPERIMENT ...]

`tables` reads the validation summary first and chooses between T1+T2 (`default`) and
T1+T2+FLAIR (`flair`) by the rule below, written before any model was scored; only then does it
read the test patients. It writes:

- `validation.tsv`: both input sets on the validation patients, and `choice.txt` (the rule and
  what it chose);
- `test.tsv`: every model and floor on the test patients (brain and tumor PSNR, the
  within-lesion AUC and recovered share of the true enhancement contrast, against the rest of
  the lesion and against the necrotic/non-enhancing core alone);
- `lesion_contrast.tsv`: per test patient and model, the mean enhancement over the T1
  (image - T1, normalised units) in the expert enhancing tumor (label 4) and in the
  necrotic / non-enhancing core (label 1), for the truth (CE-T1) and each prediction;
- `learning_curve.tsv` and `learning_curve.png`: 3, 6 and 8 training patients (T1+T2) on the
  validation and the test patients, with the floors (nothing is chosen from it).

`parity` runs `cesynth predict --coregistered --brainmask-method nonzero` (the scans are
skull-stripped, as the profile declares) from each experiment's released model
(`models:/cesynth-<experiment>@champion`; default: T1+T2 and T1+T2+FLAIR) on each test
patient's BIDS inputs (T1, T2, FLAIR: a model uses those it takes) and compares its model-grid
image with the workflow's synthesis of that experiment for that patient (`parity.tsv`).
No image of a patient is written into the output folder: tables and a curve only.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

INPUT_SETS = ("default", "flair")
CURVE = {"subjects3": 3, "subjects6": 6, "default": 8}
FLOORS = ("floor-t1", "floor-regression")
COLUMNS = ("brain_psnr", "tumor_psnr", "enh_lesion_auc", "enh_recovered_share", "enh_core_auc",
           "enh_core_recovered_share")
ENHANCING, NONENHANCING = 4, 1
CHOICE_RULE = ("the input set with the higher mean within-lesion AUC (enh_lesion_auc: is the "
               "synthetic enhancement higher in the enhancing tumor than in the non-enhancing "
               "core) on the validation patients; within 0.02 of each other, the higher brain "
               "PSNR")


def choose_inputs(validation: pd.DataFrame) -> str:
    """The experiment :data:`CHOICE_RULE` picks from the validation summary's means."""
    means = validation.set_index("model").loc[list(INPUT_SETS)]
    auc = means["enh_lesion_auc_mean"]
    if abs(auc["default"] - auc["flair"]) >= 0.02:
        return str(auc.idxmax())
    return str(means["brain_psnr_mean"].idxmax())


def _volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def _anat(results: Path, subject: str, name: str) -> Path:
    return results / "preproc" / f"sub-{subject}" / "anat" / f"sub-{subject}_{name}.nii.gz"


def synthetic_path(results: Path, model: str, subject: str) -> Path:
    return (results / "eval" / model / f"sub-{subject}" /
            f"sub-{subject}_space-model_desc-synthetic_ceT1w.nii.gz")


def lesion_contrast(results: Path, test: pd.DataFrame) -> pd.DataFrame:
    """Mean image - T1 in the enhancing tumor and the non-enhancing core, truth and models."""
    rows = []
    for subject in sorted(test["subject"].unique()):
        t1 = _volume(_anat(results, subject, "space-model_desc-norm_T1w"))
        classes = _volume(_anat(results, subject, "space-model_desc-lesion_dseg"))
        images = {"truth (CE-T1)": _anat(results, subject, "space-model_desc-norm_ceT1w")}
        images.update({model: synthetic_path(results, model, subject)
                       for model in test.loc[test["subject"] == subject, "model"]})
        for model, path in images.items():
            difference = _volume(path) - t1
            enhancing = float(difference[classes == ENHANCING].mean())
            core = float(difference[classes == NONENHANCING].mean())
            rows.append({"subject": subject, "image": model, "enhancing_minus_t1": enhancing,
                         "core_minus_t1": core, "enhancing_minus_core": enhancing - core,
                         "voxels_enhancing": int((classes == ENHANCING).sum()),
                         "voxels_core": int((classes == NONENHANCING).sum())})
    return pd.DataFrame(rows)


def learning_curve(validation: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for split, table in (("validation", validation), ("test", test)):
        for model in (*CURVE, *FLOORS):
            chosen = table[table["model"] == model]
            rows.append({"split": split, "model": model,
                         "training_patients": CURVE.get(model, 0), "n": len(chosen),
                         **{column: float(chosen[column].mean()) if column in chosen
                            else float("nan") for column in COLUMNS}})  # validation: no tumor
    return pd.DataFrame(rows)


def plot_curve(curve: pd.DataFrame, out: Path) -> None:
    panels = ("brain_psnr", "enh_lesion_auc", "enh_recovered_share")
    figure, axes = plt.subplots(1, len(panels), figsize=(12, 3.6))
    for axis, column in zip(axes, panels, strict=True):
        for split, marker in (("validation", "o"), ("test", "s")):
            points = curve[(curve["split"] == split) & (curve["model"].isin(CURVE))]
            points = points.sort_values("training_patients")
            axis.plot(points["training_patients"], points[column], marker=marker,
                      label=f"model, {split}")
            for floor, style in zip(FLOORS, (":", "--"), strict=True):
                value = curve[(curve["split"] == split) & (curve["model"] == floor)][column]
                axis.axhline(float(value.iloc[0]), linestyle=style, linewidth=0.8,
                             color="C0" if split == "validation" else "C1",
                             label=f"{floor}, {split}")
        axis.set_xlabel("training patients")
        axis.set_title(column)
        axis.set_xticks(sorted(CURVE.values()))
    axes[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def tables(results: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = pd.read_csv(results / "eval" / "validation" / "summary.tsv", sep="\t")
    chosen = choose_inputs(summary)
    summary[summary["model"].isin(INPUT_SETS + FLOORS)].to_csv(out / "validation.tsv", sep="\t",
                                                              index=False)
    (out / "choice.txt").write_text(f"rule: {CHOICE_RULE}\nchosen: {chosen}\n")
    validation = pd.read_csv(results / "eval" / "validation" / "metrics.tsv", sep="\t",
                             dtype={"subject": str})
    metrics = pd.read_csv(results / "eval" / "metrics.tsv", sep="\t", dtype={"subject": str})
    test = metrics[metrics["set"] == "A"][["subject", "model", *COLUMNS]]
    test.to_csv(out / "test.tsv", sep="\t", index=False, float_format="%.4f")
    lesion_contrast(results, test).to_csv(out / "lesion_contrast.tsv", sep="\t", index=False,
                                          float_format="%.4f")
    curve = learning_curve(validation, test)
    curve.to_csv(out / "learning_curve.tsv", sep="\t", index=False, float_format="%.4f")
    plot_curve(curve, out / "learning_curve.png")
    print(f"chosen on validation: {chosen}")


def parity(results: Path, bids: Path, out: Path, experiments: Sequence[str]) -> None:
    """Predict each test patient with each experiment's released model (its champion) and
    compare with the workflow's synthesis of that experiment."""
    metrics = pd.read_csv(results / "eval" / "metrics.tsv", sep="\t", dtype={"subject": str})
    rows = []
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{results / 'mlflow.db'}"}
    subjects = sorted(metrics.loc[metrics["set"] == "A", "subject"].unique())
    for experiment, subject in itertools.product(experiments, subjects):
        model = f"models:/cesynth-{experiment}@champion"
        anat = bids / f"sub-{subject}" / "anat"
        with tempfile.TemporaryDirectory() as work:
            native, on_grid = Path(work) / "synthetic.nii.gz", Path(work) / "model_grid.nii.gz"
            command = ["cesynth", "predict", "--t1", anat / f"sub-{subject}_T1w.nii.gz",
                       "--t2", anat / f"sub-{subject}_T2w.nii.gz",
                       "--flair", anat / f"sub-{subject}_FLAIR.nii.gz", "--coregistered",
                       "--brainmask-method", "nonzero",
                       "--model", model, "--out", native, "--out-model-grid", on_grid]
            done = subprocess.run([str(part) for part in command], capture_output=True,
                                  text=True, env=env, check=False)
            if done.returncode != 0:
                raise SystemExit(f"sub-{subject}: predict failed: {done.stderr.strip()}")
            summary = json.loads(done.stdout)
            predicted = _volume(on_grid)
        workflow = _volume(synthetic_path(results, experiment, subject))
        brain = _volume(_anat(results, subject, "space-model_desc-brain_mask")) > 0
        difference = np.abs(predicted - workflow)
        rows.append({"subject": subject, "model": model,
                     "inputs": ",".join(summary["input_modalities"]),
                     "brainmask": summary["preprocessing"]["brainmask"],
                     "identical": bool(np.array_equal(predicted, workflow)),
                     "max_abs_difference": float(difference.max()),
                     "max_abs_difference_brain": float(difference[brain].max()),
                     "correlation_brain": float(np.corrcoef(predicted[brain],
                                                            workflow[brain])[0, 1]),
                     "differences": json.dumps(summary["preprocessing"]["differences"])})
    table = pd.DataFrame(rows)
    table.to_csv(out / "parity.tsv", sep="\t", index=False)
    print(table.to_string(index=False))


def main(argv: list[str]) -> None:
    if argv[:1] == ["tables"] and len(argv) == 3:
        tables(Path(argv[1]), Path(argv[2]))
    elif argv[:1] == ["parity"] and len(argv) >= 4:
        parity(Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4:] or list(INPUT_SETS))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
