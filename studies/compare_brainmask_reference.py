"""The brain-mask reference comparison (studies/RESULTS.md): the study's reference model trained
with masks of the CE-T1 (the paper's) and of the T1 (what `cesynth predict` can redo).

Both arms run in the study's results folder with `config/profiles/study-brainmask.yaml` on top
of the study's profile (the final model and the T1 floor), so the registrations are shared and
only the mask and what follows it rerun; arm 1 (the study's own setting, masks of the CE-T1) is
kept aside before arm 2 replaces it. After a study part, arm 1 reuses that part's final model:

    snakemake study --cores all --configfile config/profiles/study.yaml \\
        config/profiles/study-brainmask.yaml
    python studies/compare_brainmask_reference.py keep results-study arm-ceT1w
    snakemake study --cores all --configfile config/profiles/study.yaml \\
        config/profiles/study-brainmask.yaml --config brainmask='{reference: T1w}'
    python studies/compare_brainmask_reference.py keep results-study arm-T1w
    python studies/compare_brainmask_reference.py compare results-study \\
        > studies/brainmask_reference.tsv

`compare` prints, per metric and set, each arm's mean and sd over the reported subjects and the
paired t-test of ceT1w - T1w (`cesynth.evaluation_tables.paired_ttest`), then the Dice of the two
arms' native brain masks per subject.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cesynth.evaluation_tables import paired_ttest

ARMS = ("arm-ceT1w", "arm-T1w")
MODEL = "default"
METRICS = ("brain_psnr", "brain_ssim", "brain_mae", "tumor_psnr", "tumor_ssim",
           "enh_tumor_corr", "enh_auc", "enh_dice", "lesion_sensitivity", "false_positives")
MASK_GLOB = "sub-*/anat/sub-*_desc-brain_mask.nii.gz"


def keep(results: Path, arm: str) -> None:
    """Copy the run's evaluation table and native brain masks to ``results/<arm>``."""
    dest = results / arm
    (dest / "eval").mkdir(parents=True, exist_ok=True)
    shutil.copy2(results / "eval" / "metrics.tsv", dest / "eval" / "metrics.tsv")
    for mask in (results / "preproc").glob(MASK_GLOB):
        target = dest / "masks" / mask.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mask, target)


def metric_rows(results: Path) -> pd.DataFrame:
    """Per metric and set: each arm's mean and sd, and the paired test of ceT1w - T1w."""
    tables = []
    for arm in ARMS:
        table = pd.read_csv(results / arm / "eval" / "metrics.tsv", sep="\t")
        table = table[table["model"] == MODEL].assign(model=arm)
        tables.append(table)
    per_subject = pd.concat(tables, ignore_index=True)
    rows = []
    for set_name, in_set in per_subject.groupby("set"):
        for metric in (m for m in METRICS if m in in_set.columns):
            if in_set[metric].notna().groupby(in_set["model"]).sum().min() < 2:
                continue
            test = paired_ttest(in_set, metric, *ARMS)
            row = {"set": set_name, "metric": metric}
            for arm in ARMS:
                values = in_set.loc[in_set["model"] == arm, metric].astype(float)
                row[f"{arm}_mean"], row[f"{arm}_sd"] = values.mean(), values.std(ddof=1)
            rows.append(row | test)
    return pd.DataFrame(rows)


def mask_dice(results: Path) -> pd.DataFrame:
    """Dice of the two arms' native brain masks, per subject."""
    rows = []
    for first in sorted((results / ARMS[0] / "masks").glob("*.nii.gz")):
        a = np.asarray(nib.load(first).dataobj) > 0
        b = np.asarray(nib.load(results / ARMS[1] / "masks" / first.name).dataobj) > 0
        rows.append({"mask": first.name, "dice": 2 * (a & b).sum() / (a.sum() + b.sum()),
                     "ceT1w_ml_minus_T1w_ml": (a.sum() - b.sum()) * _voxel_ml(first)})
    return pd.DataFrame(rows)


def _voxel_ml(path: Path) -> float:
    return float(np.prod(nib.load(path).header.get_zooms()[:3])) / 1000.0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "keep" and argv[3] in ARMS:
        keep(Path(argv[2]), argv[3])
        return 0
    if len(argv) == 3 and argv[1] == "compare":
        results = Path(argv[2])
        print(metric_rows(results).to_csv(sep="\t", index=False, float_format="%.4g"))
        print(mask_dice(results).to_csv(sep="\t", index=False, float_format="%.4g"))
        return 0
    print(f"usage: {argv[0]} keep RESULTS {{{','.join(ARMS)}}} | compare RESULTS",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
