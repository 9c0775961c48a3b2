"""How much enhancement each model predicts where the tumor truly enhances (studies/RESULTS.md).

For every Set B subject of a finished run and every evaluated model, the mean intensity inside the
enhancing part of the expert tumor mask, M = tumor & (CE-T1 - T1 > delta): the truth, the T1 (what
a model that learned no enhancement would give), and the model's synthetic CE-T1. The share of
the enhancement recovered is (model - T1) / (truth - T1).

    python studies/enhancement.py results-study > studies/enhancement.tsv
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

DELTA = 0.1


def _volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def enhancement_table(results: Path, delta: float = DELTA) -> pd.DataFrame:
    """One row per Set B subject and model: mean truth, T1 and prediction in the enhancing tumor."""
    metrics = pd.read_csv(results / "eval" / "metrics.tsv", sep="\t", dtype=str)
    rows = []
    for (subject, model), _ in metrics[metrics["set"] == "B"].groupby(["subject", "model"]):
        anat = results / "preproc" / f"sub-{subject}" / "anat"
        synthetic = (results / "eval" / model / f"sub-{subject}" /
                     f"sub-{subject}_space-model_desc-synthetic_ceT1w.nii.gz")
        if not synthetic.is_file():  # a cascade model synthesizes T2 or ADC
            continue
        truth = _volume(anat / f"sub-{subject}_space-model_desc-norm_ceT1w.nii.gz")
        t1 = _volume(anat / f"sub-{subject}_space-model_desc-norm_T1w.nii.gz")
        tumor = _volume(anat / f"sub-{subject}_space-model_desc-tumor_mask.nii.gz") > 0
        enhancing = tumor & (truth - t1 > delta)
        if not enhancing.any():
            continue
        predicted = _volume(synthetic)[enhancing].mean()
        rows.append({"subject": subject, "model": model, "voxels": int(enhancing.sum()),
                     "truth": truth[enhancing].mean(), "t1": t1[enhancing].mean(),
                     "predicted": predicted})
    table = pd.DataFrame(rows)
    table["recovered"] = (table["predicted"] - table["t1"]) / (table["truth"] - table["t1"])
    return table


def main(argv: list[str]) -> int:
    results = Path(argv[1] if len(argv) > 1 else "results-study")
    table = enhancement_table(results)
    summary = table.groupby("model")[["truth", "t1", "predicted", "recovered"]].agg(["mean", "std"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary.round(3).to_csv(sys.stdout, sep="\t")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
