"""The cohort as a BIDS dataset: subject simulation, cohort plan and the dataset writer.

Each scan is acquired on its own grid with its own rigid head pose: the parameter maps are
resampled onto the scan's grid and only then put through the signal equation; a smooth bias
field and Rician noise finish the images. The ground truth (true ADC, masks, the agent map, the
lesions' BraTS classes and instances, transforms) goes to ``derivatives/phantom`` under the names
of :func:`truth_files`. The cohort plan mixes the lesion archetypes
(:data:`~cesynth.phantom.anatomy.LESION_TYPES`) and puts every type into the validation split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cesynth import __version__
from cesynth.io import InputError, atomic_path, save_nifti, write_json, write_tsv
from cesynth.phantom.anatomy import (
    ENHANCING_TYPES,
    LESION_TYPES,
    Anatomy,
    _stream,
    build_anatomy,
    lesion_types_of,
    sample_indicators,
    sample_lesion_truth,
    sample_parameter_maps,
)
from cesynth.phantom.grids import (
    FLAIR,
    MODALITIES,
    REFERENCE_MODALITY,
    Grid,
    acquisition_grids,
    head_poses,
    random_pose,
    true_transforms,
)
from cesynth.phantom.physics import (
    B_VALUES,
    DWI_SE,
    FLAIR_IR,
    GADOLINIUM_R1_PER_MM_S,
    SPGR,
    T2_SE,
    WM_SCANNER_SIGNAL,
    add_rician_noise,
    bias_field,
    noise_free_image,
)
from cesynth.phantom.settings import PhantomSettings
from cesynth.splits import SplitFractions, participant_split

B_VECTORS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1))
# Where the ground truth goes, relative to the dataset root (see truth_files).
TRUTH_DIR = "derivatives/phantom"
TUMOR_MASK_DIR = "derivatives/tumor_masks"
# What derivatives/phantom holds (its dataset_description.json).
TRUTH_DESCRIPTION = (
    "Ground truth of the synthetic phantom. Lesion types: rim (enhancing rim, necrotic core, "
    "edema), solid (solid enhancing, metastasis-like, 3-30 mm, thin edema), nonenhancing "
    "(low-grade-glioma-like, no contrast agent), t2abnormality (treatment-effect-like gliosis, "
    "no contrast agent). On the ce-gadolinium T1w grid: desc-brain_mask; desc-enhancing_mask "
    "(enhancing lesion tissue: rim and solid lesions, not vessels); desc-agent_map (noise-free "
    "contrast agent, mM, lesions and vessels); desc-lesion_dseg (BraTS 2018 labels: 4 enhancing "
    "tumor, 1 necrotic core or non-enhancing tumor, 2 edema or T2 abnormality); desc-lesions_dseg "
    "(lesion i of the parameters' tumors = i over its whole extent, with a JSON table of type, "
    "enhancing, diameter_mm). Also the true ADC (DWI grid), transforms and parameters.")
# What a Set B tumor mask covers (BraTS labels 4 and 1 of the lesion_dseg truth).
TUMOR_MASK_DESCRIPTION = (
    "Tumor = the enhancing and non-enhancing tumor parts: enhancing rim and necrotic core of "
    "rim-enhancing lesions, solid enhancing lesions, non-enhancing (low-grade-glioma-like) "
    "lesions; i.e. BraTS labels 4 and 1 of derivatives/phantom's lesion_dseg. Edema and "
    "non-enhancing T2 abnormalities (gliosis) are not tumor.")
# The default settings (a frozen dataclass, shared safely as an argument default).
_DEFAULT_SETTINGS = PhantomSettings()
_DEFAULT_FRACTIONS = SplitFractions()


@dataclass
class SubjectScans:
    """The simulated scans of one subject and their ground truth (all on the scans' grids).

    ``masks`` (on the CE-T1 grid) holds ``brain``, ``enhancing`` (BraTS 4: rim + solid),
    ``tumor`` (BraTS 4 and 1: rim, core, solid, lgg), ``lesion_dseg`` (BraTS 4/1/2) and
    ``lesion_instances`` (lesion ``i`` of ``anatomy.tumors`` = ``i + 1``); ``true_agent`` is the
    noise-free agent concentration (mM) on the CE-T1 grid.
    """

    grids: dict[str, Grid]
    poses: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    true_adc: np.ndarray
    masks: dict[str, np.ndarray]
    anatomy: Anatomy
    true_agent: np.ndarray | None = None


def simulate_subject(subject_seed: int, lesion_types: Sequence[str] | str | int,
                     settings: PhantomSettings, *, flair: bool = False) -> SubjectScans:
    """Build the anatomy and acquire T1w, CE-T1, T2w and DWI with bias field and Rician noise.

    Args:
        subject_seed: the subject's seed.
        lesion_types: the lesions' types (see :func:`~cesynth.phantom.anatomy.build_anatomy`;
            a count gives that many rim-enhancing lesions).
        settings: phantom settings.
        flair: also acquire a FLAIR (:func:`_acquire_flair`); the other scans are the same
            with or without it.

    Returns:
        The scans (float32) and ground truth; masks and the agent map are on the CE-T1 grid.
    """
    anatomy = build_anatomy(subject_seed, lesion_types, settings)
    grids = acquisition_grids(settings)
    poses = head_poses(_stream(subject_seed, "poses"), settings)
    bias_rng = _stream(subject_seed, "bias")
    noise_rng = _stream(subject_seed, "noise")
    sigma = WM_SCANNER_SIGNAL / settings.snr
    images: dict[str, np.ndarray] = {}
    true_adc = np.zeros(0)
    true_agent = np.zeros(0)
    for modality in MODALITIES:
        names = ("pd", "t1_ms", "t2_ms") + {"ceT1w": ("agent_mM",),
                                             "dwi": ("adc_mm2_s",)}.get(modality, ())
        maps = sample_parameter_maps(anatomy, grids[modality], poses[modality], names)
        clean = noise_free_image(modality, maps)
        field_ = bias_field(bias_rng, grids[modality].shape, settings.bias_field)
        if clean.ndim == 4:
            field_ = field_[..., None]
        images[modality] = add_rician_noise(clean * field_, sigma, noise_rng)
        if modality == "dwi":
            true_adc = maps["adc_mm2_s"].astype(np.float32)
        if modality == REFERENCE_MODALITY:
            true_agent = maps["agent_mM"].astype(np.float32)
    if flair:
        _acquire_flair(anatomy, subject_seed, settings, grids, poses, images)
    reference, pose = grids[REFERENCE_MODALITY], poses[REFERENCE_MODALITY]
    masks = sample_indicators(anatomy, reference, pose, names=("brain",))
    dseg, instances = sample_lesion_truth(anatomy, reference, pose)
    masks.update(enhancing=(dseg == 4).astype(np.uint8),
                 tumor=np.isin(dseg, (4, 1)).astype(np.uint8),
                 lesion_dseg=dseg, lesion_instances=instances)
    return SubjectScans(grids, poses, images, true_adc, masks, anatomy, true_agent)


def _acquire_flair(anatomy: Anatomy, subject_seed: int, settings: PhantomSettings,
                   grids: dict[str, Grid], poses: dict[str, np.ndarray],
                   images: dict[str, np.ndarray]) -> None:
    """Add the FLAIR (inversion recovery, CSF nulled) to ``images`` and its pose to ``poses``.

    Its pose, bias field and noise come from a random stream of their own, so writing a FLAIR
    leaves every other scan of the subject bit for bit what it is without one.
    """
    rng = _stream(subject_seed, FLAIR.lower())
    poses[FLAIR] = random_pose(rng, settings)
    maps = sample_parameter_maps(anatomy, grids[FLAIR], poses[FLAIR], ("pd", "t1_ms", "t2_ms"))
    field_ = bias_field(rng, grids[FLAIR].shape, settings.bias_field)
    sigma = WM_SCANNER_SIGNAL / settings.snr
    images[FLAIR] = add_rician_noise(noise_free_image(FLAIR, maps) * field_, sigma, rng)


# ----------------------------------------------------------------------------- BIDS dataset


def plan_cohort(n_subjects: int, seed: int = 0, n_set_b: int = 0, *,
                max_tumors: int = PhantomSettings.max_tumors,
                fractions: SplitFractions | None = None) -> pd.DataFrame:
    """Subjects of the cohort, cheaply (no images): identifiers, sets, lesion types, seeds.

    Each subject draws 0 to ``max_tumors`` lesions whose types are distinct draws from
    :data:`~cesynth.phantom.anatomy.LESION_TYPES` (mixtures). sub-01 has no lesion and sub-02 at
    least one. Every Set B subject (the last ``n_set_b``) has at least two lesions (one if
    ``max_tumors`` is 1), the first rim-enhancing, so its expert-style tumor mask holds an
    enhancing tumor. With ``fractions``, each Set A subject's split is known
    (:func:`~cesynth.splits.participant_split`): test subjects get at least two lesions too, and
    the validation subjects at least one each and, together, lesions of every type (a type they
    miss replaces a repeated one, or is added to the validation subject with the fewest lesions,
    past ``max_tumors`` if need be; sub-01 included when it is a validation subject). The
    training subjects (sub-01 aside) also hold every type together, so no type the reported
    subjects have is new to the model.

    Args:
        n_subjects: number of subjects (>= 1).
        seed: cohort seed.
        n_set_b: how many of the last subjects form Set B (with tumor masks).
        max_tumors: most lesions per subject (before the validation split's coverage); 0 makes
            a lesion-free cohort.
        fractions: the workflow's split fractions; None: splits unknown, no stratification.

    Returns:
        Columns participant_id, set, n_tumors (number of lesions), lesion_types (``;``-joined,
        one entry per lesion in placement order, empty for none), subject_seed.
    """
    if n_subjects < 1 or not 0 <= n_set_b <= n_subjects:
        raise ValueError(f"need n_subjects >= 1 and 0 <= n_set_b <= n_subjects, "
                         f"got {n_subjects}, {n_set_b}")
    if n_set_b and max_tumors < 1:
        raise ValueError("Set B subjects need tumors, but max_tumors is 0")
    width = max(2, len(str(n_subjects)))
    rows = []
    for index in range(n_subjects):
        rng = np.random.default_rng([int(seed), index])
        subject_seed = int(rng.integers(0, 2**31 - 1))
        label = f"{index + 1:0{width}d}"
        in_set_b = index >= n_subjects - n_set_b
        split = ("test" if in_set_b else
                 participant_split(label, fractions) if fractions is not None else None)
        if split == "test":
            fewest = min(2, max_tumors)
        elif split == "validation" or index == 1:
            fewest = min(1, max_tumors)
        else:
            fewest = 0
        lesion_free = index == 0 and not in_set_b and split != "validation"
        count = 0 if lesion_free else int(rng.integers(fewest, max_tumors + 1))
        rows.append({"participant_id": f"sub-{label}", "set": "B" if in_set_b else "A",
                     "split": split, "types": _draw_lesion_types(rng, count, in_set_b),
                     "subject_seed": subject_seed})
    validation = [row for row in rows if row["split"] == "validation"]
    if validation and max_tumors >= 1:
        _cover_lesion_types(validation)
    training = [row for row in rows[1:] if row["split"] == "train"]  # sub-01 stays lesion-free
    if training and max_tumors >= 1:
        _cover_lesion_types(training, each=False)
    return pd.DataFrame(
        [{"participant_id": row["participant_id"], "set": row["set"],
          "n_tumors": len(row["types"]), "lesion_types": ";".join(row["types"]),
          "subject_seed": row["subject_seed"]} for row in rows],
        columns=["participant_id", "set", "n_tumors", "lesion_types", "subject_seed"])


def _draw_lesion_types(rng: np.random.Generator, count: int, rim_first: bool) -> list[str]:
    """``count`` lesion types, distinct up to four; a Set B subject's first is rim-enhancing."""
    order = [str(kind) for kind in rng.permutation(LESION_TYPES)]
    if rim_first:
        order.remove("rim")
        order.insert(0, "rim")
    return [order[k % len(order)] for k in range(count)]


def _cover_lesion_types(validation: list[dict[str, Any]], each: bool = True) -> None:
    """Give the subjects of a split (in place) every lesion type together and, with ``each``,
    at least one lesion each."""
    for row in validation if each else ():
        if not row["types"]:
            present = {kind for other in validation for kind in other["types"]}
            row["types"] = [next((k for k in LESION_TYPES if k not in present), LESION_TYPES[0])]
    for kind in LESION_TYPES:
        if any(kind in row["types"] for row in validation):
            continue
        repeated = [(row, position) for row in validation
                    for position, other in enumerate(row["types"])
                    if row["types"].count(other) > 1]
        if repeated:
            row, position = repeated[-1]
            row["types"][position] = kind
        else:
            min(validation, key=lambda row: len(row["types"]))["types"].append(kind)


def guard_demo_target(bids_dir: str | Path) -> None:
    """Refuse to write the phantom into a folder that holds some other dataset.

    Allowed: a missing or empty folder, or an earlier cesynth phantom dataset (its
    dataset_description.json names ``cesynth phantom`` in GeneratedBy).

    Args:
        bids_dir: the target dataset root.

    Raises:
        InputError: the folder holds a dataset that is not a cesynth phantom.
    """
    root = Path(bids_dir)
    description_path = root / "dataset_description.json"
    if description_path.is_file():
        try:
            description = json.loads(description_path.read_text())
        except (OSError, json.JSONDecodeError):
            description = {}
        generators = description.get("GeneratedBy", []) if isinstance(description, dict) else []
        names = {g.get("Name") for g in generators if isinstance(g, dict)}
        if "cesynth phantom" not in names:
            raise InputError(root, "holds a dataset that is not a cesynth phantom; refusing to "
                                   "write the demo cohort over it")
    elif root.is_dir() and any(root.glob("sub-*")):
        raise InputError(root, "holds subject folders but no cesynth phantom "
                               "dataset_description.json; refusing to write over them")


def _generated_by() -> list[dict[str, str]]:
    return [{"Name": "cesynth phantom", "Version": __version__,
             "Description": "physics-based synthetic brain-tumor phantom (not acquired data)"}]


def write_dataset_files(bids_dir: str | Path, plan: pd.DataFrame,
                        settings: PhantomSettings = _DEFAULT_SETTINGS, *,
                        flair: bool = False) -> None:
    """Dataset-level files: descriptions (raw and derivatives), participants table and README.

    Args:
        bids_dir: dataset root.
        plan: from :func:`plan_cohort`.
        settings: phantom settings (recorded in the phantom derivative's description).
        flair: the subjects have a FLAIR (the README says so).
    """
    root = Path(bids_dir)
    write_json({"Name": "cesynth synthetic brain-tumor phantom cohort", "BIDSVersion": "1.9.0",
                "DatasetType": "raw", "License": "CC0", "GeneratedBy": _generated_by()},
               root / "dataset_description.json")
    write_tsv(plan[["participant_id", "set"]], root / "participants.tsv")
    write_json({"participant_id": {"Description": "subject identifier"},
                "set": {"Description": "evaluation set of the subject",
                        "Levels": {"A": "brain-region evaluation only",
                                   "B": "has an expert-style tumor mask "
                                        "(derivatives/tumor_masks)"}}},
               root / "participants.json")
    _write_text(_readme(plan, flair), root / "README")
    derivative = {"BIDSVersion": "1.9.0", "DatasetType": "derivative",
                  "GeneratedBy": _generated_by()}
    write_json({**derivative, "Name": "cesynth phantom ground truth",
                "Description": TRUTH_DESCRIPTION, "LesionTypes": list(LESION_TYPES),
                "PhantomSettings": asdict(settings)},
               root / TRUTH_DIR / "dataset_description.json")
    if (plan["set"] == "B").any():
        write_json({**derivative, "Name": "expert-style tumor masks",
                    "Description": TUMOR_MASK_DESCRIPTION},
                   root / TUMOR_MASK_DIR / "dataset_description.json")


def _readme(plan: pd.DataFrame, flair: bool = False) -> str:
    counts = ", ".join(
        f"{row.participant_id}: set {row.set}, "
        + (f"lesions {row.lesion_types.replace(';', ', ')}" if row.lesion_types else "no lesion")
        for row in _with_lesion_types(plan).itertuples())
    return (
        "cesynth synthetic phantom cohort\n\n"
        "SYNTHETIC data, not acquired from any person. Heads built from the MNI ICBM152 2009a "
        "tissue maps with a random smooth deformation, skull and scalp; enhancing vessels; "
        "lesions of four types, mixed within subjects: rim (enhancing rim, necrotic core, "
        "edema), solid (solid enhancing, metastasis-like, 3-30 mm, thin edema), nonenhancing "
        "(low-grade-glioma-like, no contrast agent) and t2abnormality (treatment-effect-like "
        "gliosis, no contrast agent). Images follow the SPGR (T1w, ce-gadolinium T1w), "
        "spin-echo (T2w) and diffusion (DWI, b = 0, 500, 1000) signal equations, each scan with "
        "its own grid, head pose, bias field and Rician noise.\n\n"
        + (_FLAIR_README if flair else "")
        + f"Subjects: {counts}.\n\n"
        "Ground truth is in derivatives/phantom: true ADC, transforms, parameters, and on the "
        "ce-gadolinium T1w grid the brain mask, the enhancing-lesion mask (rim and solid "
        "lesions, not vessels), the contrast-agent map in mM (lesions and vessels; "
        "desc-agent_map), the lesions' BraTS-2018 labels (desc-lesion_dseg: 4 enhancing, 1 "
        "non-enhancing tumor or necrosis, 2 edema or T2 abnormality) and one label per lesion "
        "(desc-lesions_dseg, with a JSON table of each lesion's type, enhancement and "
        "diameter). Set B tumor masks are in derivatives/tumor_masks (BraTS labels 4 and 1).\n")


_FLAIR_README = (
    f"Each subject also has a FLAIR: inversion-recovery spin echo, S = PD |1 - 2 exp(-TI/T1) + "
    f"exp(-TR/T1)| exp(-TE/T2), TR {FLAIR_IR['tr_ms']:g} ms, TE {FLAIR_IR['te_ms']:g} ms, TI "
    f"{FLAIR_IR['ti_ms']:g} ms (the CSF nulled), 2D axial slices.\n\n")


def _with_lesion_types(plan: pd.DataFrame) -> pd.DataFrame:
    """The plan with a ``lesion_types`` column (an older plan of counts: rim lesions)."""
    if "lesion_types" in plan:
        return plan.fillna({"lesion_types": ""})
    return plan.assign(lesion_types=[";".join(lesion_types_of(int(n))) for n in plan["n_tumors"]])


def _write_text(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _sidecar(modality: str, grid: Grid) -> dict[str, Any]:
    """BIDS sidecar with the acquisition parameters actually used (times in seconds)."""
    common = {"Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "cesynth",
              "ManufacturersModelName": "cesynth synthetic phantom",
              "CesynthSyntheticPhantom": True,
              "SliceThickness": float(grid.voxel_mm[2])}
    if modality in ("T1w", "ceT1w"):
        sidecar = {**common, "ScanningSequence": "GR", "SequenceVariant": "SP",
                   "MRAcquisitionType": "3D", "RepetitionTime": SPGR["tr_ms"] / 1000,
                   "EchoTime": SPGR["te_ms"] / 1000, "FlipAngle": SPGR["flip_deg"]}
        if modality == "ceT1w":
            sidecar.update(ContrastBolusIngredient="GADOLINIUM",
                           ContrastAgentRelaxivity_per_mM_s=GADOLINIUM_R1_PER_MM_S)
        return sidecar
    if modality == FLAIR:
        return {**common, "ScanningSequence": "SE_IR", "MRAcquisitionType": "2D",
                "RepetitionTime": FLAIR_IR["tr_ms"] / 1000, "EchoTime": FLAIR_IR["te_ms"] / 1000,
                "InversionTime": FLAIR_IR["ti_ms"] / 1000, "FlipAngle": 90}
    acquisition = T2_SE if modality == "T2w" else DWI_SE
    sidecar = {**common, "ScanningSequence": "SE" if modality == "T2w" else "EP",
               "MRAcquisitionType": "2D", "RepetitionTime": acquisition["tr_ms"] / 1000,
               "EchoTime": acquisition["te_ms"] / 1000, "FlipAngle": 90}
    return sidecar


def truth_files(participant_id: str) -> dict[str, str]:
    """The ground-truth files the phantom writes for a subject: the one place they are named.

    :func:`subject_paths` (so the writer) and the workflow's rules (``rules/common.smk``) take
    the names from here. Only Set B subjects get ``tumor_mask``. On the CE-T1 grid:
    ``brain_mask``, ``enhancing_mask`` (enhancing lesion tissue: rim and solid lesions, not
    vessels; uint8), ``agent_map`` (noise-free agent in mM, lesions and vessels; float32),
    ``lesion_dseg`` (BraTS 2018: 4 enhancing, 1 non-enhancing tumor, 2 edema or T2
    abnormality; uint8), ``lesion_instances`` (lesion ``i`` of the parameters' ``tumors`` = ``i``
    over its whole extent; uint16) with ``lesion_instances_sidecar`` (``lesions``: label, type,
    enhancing, diameter_mm) and ``tumor_mask`` (BraTS 4 and 1).

    Args:
        participant_id: e.g. ``sub-01``; a Snakemake pattern such as ``sub-{subject}`` works too.

    Returns:
        Key (true_adc, brain_mask, enhancing_mask, agent_map, lesion_dseg, lesion_instances,
        lesion_instances_sidecar, transforms, parameters, tumor_mask) -> path relative to the
        dataset root, with ``/`` separators.
    """
    sub = participant_id
    truth = f"{TRUTH_DIR}/{sub}/{sub}"
    return {
        "true_adc": f"{truth}_desc-trueadc_adc.nii.gz",
        "brain_mask": f"{truth}_space-ceT1w_desc-brain_mask.nii.gz",
        "enhancing_mask": f"{truth}_space-ceT1w_desc-enhancing_mask.nii.gz",
        "agent_map": f"{truth}_space-ceT1w_desc-agent_map.nii.gz",
        "lesion_dseg": f"{truth}_space-ceT1w_desc-lesion_dseg.nii.gz",
        "lesion_instances": f"{truth}_space-ceT1w_desc-lesions_dseg.nii.gz",
        "lesion_instances_sidecar": f"{truth}_space-ceT1w_desc-lesions_dseg.json",
        "transforms": f"{truth}_desc-transforms.json",
        "parameters": f"{truth}_desc-phantom_parameters.json",
        "tumor_mask": f"{TUMOR_MASK_DIR}/{sub}/anat/{sub}_desc-tumor_mask.nii.gz",
    }


def subject_paths(bids_dir: str | Path, participant_id: str, *,
                  flair: bool = False) -> dict[str, Path]:
    """Every path :func:`write_subject` writes for a subject (Set B tumor mask included).

    Args:
        bids_dir: dataset root.
        participant_id: e.g. ``sub-01``.
        flair: include the FLAIR and its sidecar.

    Returns:
        Key -> path.
    """
    root = Path(bids_dir)
    sub = participant_id
    anat, dwi = root / sub / "anat", root / sub / "dwi"
    return {
        "T1w": anat / f"{sub}_T1w.nii.gz", "T1w_json": anat / f"{sub}_T1w.json",
        "ceT1w": anat / f"{sub}_ce-gadolinium_T1w.nii.gz",
        "ceT1w_json": anat / f"{sub}_ce-gadolinium_T1w.json",
        "T2w": anat / f"{sub}_T2w.nii.gz", "T2w_json": anat / f"{sub}_T2w.json",
        "dwi": dwi / f"{sub}_dwi.nii.gz", "dwi_json": dwi / f"{sub}_dwi.json",
        "bval": dwi / f"{sub}_dwi.bval", "bvec": dwi / f"{sub}_dwi.bvec",
        **({FLAIR: anat / f"{sub}_FLAIR.nii.gz", f"{FLAIR}_json": anat / f"{sub}_FLAIR.json"}
           if flair else {}),
        **{key: root / relative for key, relative in truth_files(sub).items()},
    }


def write_subject(bids_dir: str | Path, plan_row: Mapping[str, Any],
                  settings: PhantomSettings = _DEFAULT_SETTINGS, *,
                  flair: bool = False) -> dict[str, Path]:
    """Simulate one subject and write its images, sidecars and ground truth.

    Args:
        bids_dir: dataset root.
        plan_row: one row of :func:`plan_cohort` (participant_id, set, lesion_types,
            subject_seed; a row with n_tumors and no lesion_types places rim lesions).
        settings: phantom settings.
        flair: also write ``anat/sub-<id>_FLAIR.nii.gz`` (and its transform in the truth);
            every other file is the same with or without it.

    Returns:
        Key -> path of every file written.
    """
    sub = str(plan_row["participant_id"])
    requested = lesion_types_of(plan_row["lesion_types"] if "lesion_types" in plan_row
                                else int(plan_row["n_tumors"]))
    scans = simulate_subject(int(plan_row["subject_seed"]), requested, settings, flair=flair)
    paths = subject_paths(bids_dir, sub, flair=flair)
    if plan_row["set"] != "B":
        del paths["tumor_mask"]
    for modality in scans.images:
        save_nifti(scans.images[modality], scans.grids[modality].affine, paths[modality],
                   synthetic=True)
        write_json(_sidecar(modality, scans.grids[modality]), paths[f"{modality}_json"])
    _write_text(" ".join(f"{b:g}" for b in B_VALUES) + "\n", paths["bval"])
    _write_text("".join(" ".join(str(v[axis]) for v in B_VECTORS) + "\n" for axis in range(3)),
                paths["bvec"])
    reference = scans.grids[REFERENCE_MODALITY].affine
    save_nifti(scans.true_adc, scans.grids["dwi"].affine, paths["true_adc"])
    save_nifti(scans.masks["brain"], reference, paths["brain_mask"], dtype=np.uint8)
    save_nifti(scans.masks["enhancing"], reference, paths["enhancing_mask"], dtype=np.uint8)
    save_nifti(scans.true_agent, reference, paths["agent_map"], dtype=np.float32)
    save_nifti(scans.masks["lesion_dseg"], reference, paths["lesion_dseg"], dtype=np.uint8)
    instances = scans.masks["lesion_instances"]
    save_nifti(instances, reference, paths["lesion_instances"], dtype=np.uint16)
    voxels = np.bincount(instances.ravel(), minlength=len(scans.anatomy.tumors) + 1)
    write_json({"Description": "one label per phantom lesion over its whole extent (edema "
                               "included), in the order of the parameters' tumors",
                "lesions": [{"label": i, "type": tumor["type"],
                             "enhancing": tumor["type"] in ENHANCING_TYPES,
                             "diameter_mm": round(float(tumor["diameter_mm"]), 3),
                             "voxels": int(voxels[i])}
                            for i, tumor in enumerate(scans.anatomy.tumors, start=1)]},
               paths["lesion_instances_sidecar"])
    if "tumor_mask" in paths:
        save_nifti(scans.masks["tumor"], reference, paths["tumor_mask"], dtype=np.uint8)
    write_json(true_transforms(scans.poses), paths["transforms"])
    write_json({"subject_seed": int(plan_row["subject_seed"]),
                "n_tumors_requested": len(requested),
                "lesion_types_requested": requested,
                "tumors": scans.anatomy.tumors,
                "tissues": {name: asdict(t) for name, t in scans.anatomy.tissues.items()},
                "units": {"t1_ms": "ms", "t2_ms": "ms", "adc_mm2_s": "mm2/s", "agent_mM": "mM"},
                "settings": asdict(settings)}, paths["parameters"])
    return paths


def make_cohort(out_dir: str | Path, n_subjects: int, seed: int = 0, n_set_b: int | None = None,
                settings: PhantomSettings = _DEFAULT_SETTINGS,
                fractions: SplitFractions | None = _DEFAULT_FRACTIONS, *,
                flair: bool = False) -> pd.DataFrame:
    """Write a whole phantom cohort as a BIDS dataset.

    Args:
        out_dir: dataset root.
        n_subjects: number of subjects.
        seed: cohort seed.
        n_set_b: Set B size; default max(1, round(0.25 n)) for n >= 2, else 0.
        settings: phantom settings.
        fractions: the split fractions the cohort will be split with (default the config's
            defaults), so its validation subjects hold every lesion type; None: unstratified.
        flair: also write each subject's FLAIR (:func:`write_subject`).

    Returns:
        The cohort plan (see :func:`plan_cohort`).
    """
    if n_set_b is None:
        n_set_b = max(1, round(0.25 * n_subjects)) if n_subjects >= 2 else 0
    plan = plan_cohort(n_subjects, seed, n_set_b, max_tumors=settings.max_tumors,
                       fractions=fractions)
    write_dataset_files(out_dir, plan, settings, flair=flair)
    for _, row in plan.iterrows():
        write_subject(out_dir, row, settings, flair=flair)
    return plan
