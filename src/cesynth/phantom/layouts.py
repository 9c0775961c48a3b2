"""Small phantom cohorts in published layouts (UCSF-PDGM, BraTS), for ``cesynth import``.

Each case is one phantom head (:func:`~cesynth.phantom.anatomy.build_anatomy`) imaged on its
anatomy grid: every contrast on one grid (co-registered), skull-stripped, with Rician noise; an
ADC map instead of DWI (UCSF-PDGM also gets a DTI MD map), a FLAIR (inversion recovery with the
CSF nulled, :data:`~cesynth.phantom.physics.FLAIR_IR`); and the lesions as a multi-label
segmentation in the layout's label convention (1 necrotic core or non-enhancing tumor, 2 edema or
T2 abnormality, enhancing tumor 3 in BraTS 2023 naming, 4 in UCSF-PDGM and older BraTS). Header
free-text fields carry text, so the import's cleaning shows.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from cesynth.io import InputError, atomic_path
from cesynth.phantom.anatomy import BRATS_CLASSES, LABEL, _stream, build_anatomy
from cesynth.phantom.cohort import plan_cohort
from cesynth.phantom.physics import WM_SCANNER_SIGNAL, add_rician_noise, noise_free_image
from cesynth.phantom.settings import PhantomSettings

LAYOUT_NAMES = ("ucsf-pdgm", "brats")
BRATS_NAMINGS = ("2023", "2017")
_MARKER = "README_cesynth_phantom.txt"


def case_ids(layout: str, n_cases: int, naming: str = "2023") -> list[str]:
    """The public-style case IDs the phantom writes (``UCSF-PDGM-0001``, ``BraTS-GLI-00001-000``,
    ``BraTS20_Training_001``)."""
    if layout == "ucsf-pdgm":
        return [f"UCSF-PDGM-{i + 1:04d}" for i in range(n_cases)]
    if layout == "brats":
        if naming == "2017":
            return [f"BraTS20_Training_{i + 1:03d}" for i in range(n_cases)]
        return [f"BraTS-GLI-{i + 1:05d}-000" for i in range(n_cases)]
    raise ValueError(f"unknown layout {layout!r}")


def write_layout_cohort(out_dir: str | Path, layout: str, n_cases: int, seed: int = 0,
                        settings: PhantomSettings | None = None,
                        naming: str = "2023") -> list[Path]:
    """Write a phantom cohort in a published layout.

    Args:
        out_dir: the cohort folder (missing, empty, or an earlier phantom layout cohort).
        layout: ``ucsf-pdgm`` or ``brats``.
        n_cases: number of cases (each with a rim-enhancing lesion and a mixture of others).
        seed: cohort seed.
        settings: phantom settings (default 2 mm voxels).
        naming: BraTS file naming, ``2023`` (``-t1n``...) or ``2017`` (``_t1``...).

    Returns:
        The case folders.
    """
    if layout not in LAYOUT_NAMES:
        raise InputError(layout, f"unknown layout (expected {', '.join(LAYOUT_NAMES)})")
    if naming not in BRATS_NAMINGS:
        raise InputError(naming, f"unknown BraTS naming (expected {', '.join(BRATS_NAMINGS)})")
    if n_cases < 1:
        raise InputError(out_dir, "need at least one case")
    root = Path(out_dir)
    if root.is_dir() and any(root.iterdir()) and not (root / _MARKER).is_file():
        raise InputError(root, "is not empty and holds no cesynth phantom cohort; refusing to "
                               "write into it")
    settings = settings or PhantomSettings()
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER).write_text(
        f"cesynth synthetic phantom cohort in the {layout} layout: SYNTHETIC data, not "
        "acquired from any person.\n")
    plan = plan_cohort(n_cases, seed, n_set_b=n_cases, max_tumors=max(1, settings.max_tumors))
    folders = []
    for case, row in zip(case_ids(layout, n_cases, naming), plan.itertuples(), strict=True):
        folders.append(_write_case(root, layout, naming, case, int(row.subject_seed),
                                   row.lesion_types, settings))
    return folders


def _write_case(root: Path, layout: str, naming: str, case: str, subject_seed: int,
                lesion_types: str, settings: PhantomSettings) -> Path:
    anatomy = build_anatomy(subject_seed, lesion_types, settings)
    brain = anatomy.indicators["brain"] > 0.5
    rng = _stream(subject_seed, "noise")
    sigma = WM_SCANNER_SIGNAL / settings.snr
    maps = {name: volume.astype(np.float64) for name, volume in anatomy.maps.items()}
    images = {}
    # the FLAIR is drawn last from the noise stream: the other contrasts do not depend on it
    for modality in ("T1w", "ceT1w", "T2w", "FLAIR"):
        clean = noise_free_image(modality, maps)
        images[modality] = np.where(brain, add_rician_noise(clean, sigma, rng), 0.0)
    flair = images["FLAIR"]
    adc = np.where(brain, anatomy.maps["adc_mm2_s"], 0.0).astype(np.float32)
    enhancing = 3 if layout == "brats" and naming == "2023" else 4
    seg = np.zeros(anatomy.labels.shape, np.uint8)
    for label, tissues in BRATS_CLASSES.items():
        in_class = np.isin(anatomy.labels, [LABEL[t] for t in tissues])
        seg[in_class] = enhancing if label == 4 else label
    seg[~brain] = 0
    affine = anatomy.grid.affine
    if layout == "ucsf-pdgm":
        folder = root / f"{case}_nifti"
        files = {"T1": images["T1w"], "T1c": images["ceT1w"], "T2": images["T2w"],
                 "FLAIR": flair, "ADC": adc, "DTI_eddy_MD": adc * np.float32(1.03),
                 "DTI_eddy_FA": np.where(brain, 0.3, 0.0).astype(np.float32),
                 "brain_segmentation": brain.astype(np.uint8), "tumor_segmentation": seg}
        names = {suffix: f"{case}_{suffix}.nii.gz" for suffix in files}
    elif naming == "2023":
        folder = root / case
        files = {"t1n": images["T1w"], "t1c": images["ceT1w"], "t2w": images["T2w"],
                 "t2f": flair, "seg": seg}
        names = {suffix: f"{case}-{suffix}.nii.gz" for suffix in files}
    else:
        folder = root / case
        files = {"t1": images["T1w"], "t1ce": images["ceT1w"], "t2": images["T2w"],
                 "flair": flair, "seg": seg}
        names = {suffix: f"{case}_{suffix}.nii.gz" for suffix in files}
    for suffix, data in files.items():
        _save(data, affine, folder / names[suffix], case)
    return folder


def _save(data: np.ndarray, affine: np.ndarray, path: Path, case: str) -> None:
    """Anatomical images as int16 (as the releases store them), maps as float32, labels uint8;
    header free text filled in as scanner and tool exports often do."""
    if data.dtype == np.uint8:
        array = data
    elif data.dtype == np.float32:
        array = data
    else:
        array = np.clip(np.rint(data), 0, np.iinfo(np.int16).max).astype(np.int16)
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = f"phantom {case}".encode()[:80]
    img.header["aux_file"] = b"phantom aux"
    img.header["db_name"] = b"phantom db"
    img.header["intent_name"] = b"phantom"
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
