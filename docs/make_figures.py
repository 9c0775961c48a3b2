"""Make the README's pictures from a demo run: `python docs/make_figures.py [BIDS] [RESULTS]`.

Draws one axial slice of each raw modality for a demo subject without a tumor and one with,
each modality on its own grid, cut at the same world height (through the tumor when there is one),
and copies the QC montage and the lesion-sensitivity figure. The synthesis panels are made by
the pipeline itself (`results/eval/paper/fig4_synthesis.png`, rule `plot_synthesis_panel`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

OUT = Path(__file__).parent / "img"
PANELS = (
    ("T1w", "anat/{s}_T1w.nii.gz", 0),
    ("CE-T1 (target)", "anat/{s}_ce-gadolinium_T1w.nii.gz", 0),
    ("T2w", "anat/{s}_T2w.nii.gz", 0),
    ("DWI b=0", "dwi/{s}_dwi.nii.gz", 0),
    ("DWI b=1000", "dwi/{s}_dwi.nii.gz", 4),
)


def world_height(bids: Path, subject: str) -> float:
    """Height (RAS z, mm) through the enhancing tumor, else through the brain's centre."""
    truth = bids / "derivatives" / "phantom" / subject
    for name in (f"{subject}_space-ceT1w_desc-enhancing_mask.nii.gz",
                 f"{subject}_space-ceT1w_desc-brain_mask.nii.gz"):
        mask = nib.load(truth / name)
        voxels = np.argwhere(np.asanyarray(mask.dataobj) > 0)
        if len(voxels):
            return float(nib.affines.apply_affine(mask.affine, voxels.mean(axis=0))[2])
    raise ValueError(f"{subject}: empty ground-truth masks")


def axial_slice(path: Path, volume: int, z_mm: float) -> np.ndarray:
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asanyarray(img.dataobj)
    data = data[..., volume] if data.ndim == 4 else data
    k = int(round(nib.affines.apply_affine(np.linalg.inv(img.affine), [0, 0, z_mm])[2]))
    return np.rot90(data[:, :, int(np.clip(k, 0, data.shape[2] - 1))])


def image_grid(rows: dict[str, list[np.ndarray]], titles: list[str], out_png: Path,
               vmax: float | None = None) -> None:
    """One row of grey images per subject; ``vmax`` None: each image's 99.5th percentile."""
    size = (2.4 * len(titles), 2.6 * len(rows))
    fig, axes = plt.subplots(len(rows), len(titles), figsize=size, squeeze=False)
    for row, (subject, images) in enumerate(rows.items()):
        for col, image in enumerate(images):
            ax = axes[row, col]
            top = np.percentile(image, 99.5) if vmax is None else vmax
            ax.imshow(image, cmap="gray", vmin=0, vmax=top)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=10)
        axes[row, 0].set_ylabel(subject, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def subject_rows(bids: Path, subjects: list[str], out_png: Path) -> None:
    rows = {}
    for subject in subjects:
        z_mm = world_height(bids, subject)
        rows[subject] = [axial_slice(bids / subject / pattern.format(s=subject), volume, z_mm)
                         for _, pattern, volume in PANELS]
    image_grid(rows, [label for label, _, _ in PANELS], out_png)


def main(bids: Path, results: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    subject_rows(bids, ["sub-01", "sub-02"], OUT / "demo_subjects.png")
    montage = results / "qc" / "sub-02" / "sub-02_desc-montage.png"
    if montage.exists():
        shutil.copyfile(montage, OUT / "qc_montage_sub-02.png")
    lesions = results / "eval" / "lesion_sensitivity.png"
    if lesions.exists():
        shutil.copyfile(lesions, OUT / "lesion_sensitivity.png")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0] if args else "demo/bids"), Path(args[1] if len(args) > 1 else "results"))
