"""Tests of the synthetic phantom: signal physics, ground truth, BIDS layout, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage

from cesynth import phantom
from cesynth.io import InputError
from cesynth.splits import SplitFractions, participant_split

SETTINGS = phantom.PhantomSettings(voxel_mm=4.0)
REPO = Path(__file__).resolve().parents[1]
ALL_TYPES = ["rim", "solid", "nonenhancing", "t2abnormality"]

# The SPEC "Phantom physics" table, written out independently of the module's constants:
# tissue -> (T1 ms, T2 ms, PD, ADC 1e-3 mm2/s, agent mM), each a (low, high) range.
SPEC_TABLE = {
    "wm": ((830, 1100), (70, 80), (0.69, 0.69), (0.70, 0.80), (0, 0)),
    "gm": ((1300, 1800), (80, 110), (0.80, 0.80), (0.80, 0.90), (0, 0)),
    "csf": ((4000, 4500), (1500, 2000), (1.0, 1.0), (3.0, 3.0), (0, 0)),
    "edema": ((1800, 2200), (150, 250), (0.85, 0.85), (1.3, 1.6), (0, 0)),
    "rim": ((1500, 2000), (100, 150), (0.85, 0.85), (1.0, 1.3), (0.1, 0.5)),
    "core": ((2500, 3000), (200, 300), (0.90, 0.90), (1.5, 2.5), (0, 0)),
    "vessel": ((1650, 1900), (150, 150), (0.85, 0.85), (2.0, 2.0), (0.8, 1.2)),
    "fat": ((370, 400), (60, 130), (0.90, 0.90), (0.05, 0.05), (0, 0)),
    "skull": ((1000, 1000), (1, 1), (0.05, 0.05), (0.1, 0.1), (0, 0)),
    "solid": ((1200, 1600), (80, 120), (0.85, 0.85), (0.8, 1.2), (0.2, 0.6)),
    "lgg": ((1400, 1900), (120, 200), (0.88, 0.88), (1.2, 1.7), (0, 0)),
    "gliosis": ((1300, 1700), (100, 160), (0.85, 0.85), (1.1, 1.5), (0, 0)),
}
# Each lesion type: the tissues of its extent, and its signature tissue (the lesion proper's part
# that shows the type: the enhancing rim, the solid lesion, lgg, gliosis) with its BraTS label.
TYPE_TISSUES = {"rim": {"rim", "core", "edema"}, "solid": {"solid", "edema"},
                "nonenhancing": {"lgg"}, "t2abnormality": {"gliosis"}}
SIGNATURE = {"rim": ("rim", 4), "solid": ("solid", 4), "nonenhancing": ("lgg", 1),
             "t2abnormality": ("gliosis", 2)}


@pytest.fixture(scope="module")
def anatomy() -> phantom.Anatomy:
    return phantom.build_anatomy(subject_seed=7, lesion_types=2, settings=SETTINGS)


@pytest.fixture(scope="module")
def archetypes() -> phantom.Anatomy:
    """A head with a lesion of every type (and a second solid one)."""
    return phantom.build_anatomy(11, ALL_TYPES + ["solid"], SETTINGS)


@pytest.fixture(scope="module")
def archetype_subject(tmp_path_factory: pytest.TempPathFactory
                      ) -> tuple[dict[str, Path], phantom.SubjectScans]:
    """A Set B subject with every lesion type, written to disk, and its simulation."""
    row = {"participant_id": "sub-09", "set": "B", "n_tumors": 5,
           "lesion_types": ";".join(ALL_TYPES + ["solid"]), "subject_seed": 11}
    paths = phantom.write_subject(tmp_path_factory.mktemp("archetypes"), row, SETTINGS)
    return paths, phantom.simulate_subject(11, row["lesion_types"], SETTINGS)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("bids")
    plan = phantom.make_cohort(root, n_subjects=3, seed=0, n_set_b=1, settings=SETTINGS,
                               fractions=SplitFractions())
    return root, plan


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


# ----------------------------------------------------------------------------- physics


def test_signal_equations_match_hand_computed_values() -> None:
    assert phantom.spgr_signal(0.8, 1000.0, 100.0, tr_ms=8.0, te_ms=3.0, flip_deg=12.0) == (
        pytest.approx(0.04338330290901936, rel=1e-12))
    assert phantom.spin_echo_signal(0.8, 1500.0, 100.0, tr_ms=4000.0, te_ms=100.0) == (
        pytest.approx(0.27385432637194795, rel=1e-12))
    # 1/T1post = 1/1.5 s + 4 /(mM s) * 0.3 mM = 1.8667 /s
    assert phantom.t1_post_contrast(1500.0, 0.3) == pytest.approx(535.7142857142857, rel=1e-12)
    assert phantom.t1_post_contrast(1500.0, 0.0) == pytest.approx(1500.0)
    assert phantom.dwi_signal(200.0, 1e-3, 1000.0) == pytest.approx(200.0 * math.exp(-1.0))


def test_spgr_signal_rises_when_t1_shortens() -> None:
    t1 = np.array([400.0, 900.0, 1500.0, 4000.0])
    assert np.all(np.diff(phantom.spgr_signal(1.0, t1, 100.0)) < 0)


@pytest.mark.parametrize("seed", range(8))
def test_tissue_parameters_within_spec_ranges(seed: int) -> None:
    tissues = phantom.tissue_parameters(np.random.default_rng(seed))
    for name, (t1, t2, pd_, adc, agent) in SPEC_TABLE.items():
        params = tissues[name]
        assert t1[0] <= params.t1_ms <= t1[1], name
        assert t2[0] <= params.t2_ms <= t2[1], name
        assert pd_[0] <= params.pd <= pd_[1], name
        assert adc[0] * 1e-3 - 1e-12 <= params.adc_mm2_s <= adc[1] * 1e-3 + 1e-12, name
        assert agent[0] <= params.agent_mM <= agent[1], name


def test_tissue_parameters_vary_between_subjects() -> None:
    first = phantom.tissue_parameters(np.random.default_rng(1))
    second = phantom.tissue_parameters(np.random.default_rng(2))
    assert first["wm"].t1_ms != second["wm"].t1_ms


def test_rician_noise_statistics() -> None:
    rng = np.random.default_rng(0)
    sigma = 3.0
    on_zero = phantom.add_rician_noise(np.zeros(400_000), sigma, rng)
    assert on_zero.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.01)
    assert on_zero.min() >= 0
    on_high = phantom.add_rician_noise(np.full(400_000, 100.0), sigma, rng)
    assert on_high.mean() == pytest.approx(100.0, rel=0.01)
    assert on_high.std() == pytest.approx(sigma, rel=0.02)


# ----------------------------------------------------------------------------- ground truth


def test_noise_free_dwi_gives_back_true_adc_exactly(anatomy: phantom.Anatomy) -> None:
    grid = phantom.acquisition_grids(SETTINGS)["dwi"]
    pose = phantom.rigid_matrix([4.0, -3.0, 5.0], [2.0, -4.0, 3.0])
    maps = phantom.sample_parameter_maps(anatomy, grid, pose)
    dwi = phantom.noise_free_image("dwi", maps)
    s0 = dwi[..., 0]
    head = s0 > 1e-6 * s0.max()
    assert head.sum() > 10_000
    for volume, b in enumerate(phantom.B_VALUES):
        if b == 0:
            continue
        adc = -np.log(dwi[..., volume][head] / s0[head]) / b
        np.testing.assert_allclose(adc, maps["adc_mm2_s"][head], rtol=1e-9, atol=1e-12)
    # The map is not trivial: CSF, parenchyma and tumor values all appear.
    assert maps["adc_mm2_s"][head].max() > 2.5e-3
    assert np.any(np.abs(maps["adc_mm2_s"][head] - 0.75e-3) < 0.06e-3)


def test_enhancement_only_where_agent(anatomy: phantom.Anatomy) -> None:
    grid = phantom.acquisition_grids(SETTINGS)["ceT1w"]
    pose = phantom.rigid_matrix([-5.0, 2.0, 3.0], [1.0, 3.0, -2.0])
    maps = phantom.sample_parameter_maps(anatomy, grid, pose)
    enhancement = phantom.noise_free_image("ceT1w", maps) - phantom.noise_free_image("T1w", maps)
    has_agent = maps["agent_mM"] > 0
    assert has_agent.sum() > 20
    np.testing.assert_array_equal(enhancement > 0, has_agent)
    assert np.all(enhancement[~has_agent] == 0)


def test_anatomy_has_tumor_parts_and_head_shells(anatomy: phantom.Anatomy) -> None:
    counts = np.bincount(anatomy.labels.ravel(), minlength=len(phantom.LABELS))
    for name in ("csf", "gm", "wm", "edema", "rim", "core", "vessel", "fat", "skull"):
        assert counts[phantom.LABEL[name]] > 0, name
    assert len(anatomy.tumors) == 2
    # A count still means that many rim-enhancing lesions, as the phantom's tumors always were.
    assert [tumor["type"] for tumor in anatomy.tumors] == ["rim", "rim"]
    for name in ("solid", "lgg", "gliosis"):
        assert counts[phantom.LABEL[name]] == 0, name
    brain = anatomy.indicators["brain"] > 0
    # Skull and scalp are outside the brain mask; rim and core inside it.
    assert not np.any(brain & np.isin(anatomy.labels, [phantom.LABEL["skull"],
                                                        phantom.LABEL["fat"]]))
    assert np.all(brain[np.isin(anatomy.labels, [phantom.LABEL["rim"], phantom.LABEL["core"]])])


@pytest.mark.parametrize("seed", [0, 5])
def test_intracranial_volume_is_that_of_a_real_head(seed: int) -> None:
    # Adult intracranial volumes lie around 1200-1800 ml; the MNI template alone gives ~2100 ml.
    settings = phantom.PhantomSettings(voxel_mm=4.0)
    anatomy = phantom.build_anatomy(seed, 0, settings)
    volume_ml = (anatomy.indicators["brain"] > 0).sum() * settings.voxel_mm ** 3 / 1000
    assert 1200 < volume_ml < 1800


def test_scalp_is_bright_and_separated_from_brain_by_dark_skull(
        cohort: tuple[Path, pd.DataFrame]) -> None:
    root, _ = cohort
    ce = _load(root / "sub-01" / "anat" / "sub-01_ce-gadolinium_T1w.nii.gz")
    brain = _load(root / "derivatives/phantom/sub-01/sub-01_space-ceT1w_desc-brain_mask.nii.gz") > 0
    white_matter_level = np.median(ce[brain])
    bright_outside = (ce > 1.4 * white_matter_level) & ~brain
    assert bright_outside.sum() > 1000
    # Every bright voxel outside the brain lies beyond a gap of at least one voxel from it.
    near_brain = ndimage.binary_dilation(brain, iterations=1)
    assert bright_outside[near_brain & ~brain].mean() < 0.05


# ----------------------------------------------------------------------------- cohort on disk


def test_plan_cohort_rules() -> None:
    plan = phantom.plan_cohort(12, seed=3, n_set_b=3)
    assert list(plan.columns) == ["participant_id", "set", "n_tumors", "lesion_types",
                                  "subject_seed"]
    types = plan["lesion_types"].str.split(";").map(lambda kinds: [k for k in kinds if k])
    assert (types.map(len) == plan["n_tumors"]).all()
    assert set().union(*types) <= set(phantom.LESION_TYPES)
    # Set B: a mixture led by a rim-enhancing lesion (its tumor mask holds enhancing tumor).
    assert all(kinds[0] == "rim" and len(set(kinds)) >= 2 for kinds in types[plan["set"] == "B"])
    assert plan["participant_id"].tolist()[:2] == ["sub-01", "sub-02"]
    assert plan["set"].tolist() == ["A"] * 9 + ["B"] * 3
    assert plan.loc[0, "n_tumors"] == 0 and plan.loc[1, "n_tumors"] >= 1
    assert (plan.loc[plan["set"] == "B", "n_tumors"] >= 1).all()
    assert plan["n_tumors"].between(0, phantom.PhantomSettings().max_tumors).all()
    pd.testing.assert_frame_equal(plan, phantom.plan_cohort(12, seed=3, n_set_b=3))
    assert not plan.equals(phantom.plan_cohort(12, seed=4, n_set_b=3))
    assert phantom.plan_cohort(120)["participant_id"].iloc[0] == "sub-001"


def test_cohort_files_follow_bids_names(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, plan = cohort
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and "BIDSVersion" in description
    derivative = json.loads((root / "derivatives/phantom/dataset_description.json").read_text())
    assert derivative["DatasetType"] == "derivative"
    assert derivative["LesionTypes"] == ALL_TYPES and "lesion_dseg" in derivative["Description"]
    masks = json.loads((root / "derivatives/tumor_masks/dataset_description.json").read_text())
    assert "BraTS labels 4 and 1" in masks["Description"]
    readme = (root / "README").read_text()
    assert "t2abnormality" in readme and "sub-01: set A, no lesion" in readme
    assert (root / "README").read_text().strip()
    for sub in plan["participant_id"]:
        for relative in (f"anat/{sub}_T1w.nii.gz", f"anat/{sub}_ce-gadolinium_T1w.nii.gz",
                         f"anat/{sub}_T2w.nii.gz", f"dwi/{sub}_dwi.nii.gz",
                         f"dwi/{sub}_dwi.bval", f"dwi/{sub}_dwi.bvec", f"anat/{sub}_T1w.json"):
            assert (root / sub / relative).is_file(), relative
        truth = root / "derivatives" / "phantom" / sub
        for name in ("desc-trueadc_adc.nii.gz", "space-ceT1w_desc-brain_mask.nii.gz",
                     "space-ceT1w_desc-enhancing_mask.nii.gz", "desc-transforms.json"):
            assert (truth / f"{sub}_{name}").is_file(), name
    leftovers = [p for p in root.rglob(".*") if p.is_file()]
    assert not leftovers, "temporary files left behind"


def test_participants_and_plan_match(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, plan = cohort
    participants = pd.read_csv(root / "participants.tsv", sep="\t", dtype=str)
    assert participants["participant_id"].tolist() == plan["participant_id"].tolist()
    assert participants["set"].tolist() == ["A", "A", "B"]
    pd.testing.assert_frame_equal(plan, phantom.plan_cohort(3, seed=0, n_set_b=1,
                                                            fractions=SplitFractions()))
    assert "set" in json.loads((root / "participants.json").read_text())


def test_sidecars_hold_acquisition_parameters_in_seconds(
        cohort: tuple[Path, pd.DataFrame]) -> None:
    anat = cohort[0] / "sub-01" / "anat"
    t1w = json.loads((anat / "sub-01_T1w.json").read_text())
    assert t1w["RepetitionTime"] == pytest.approx(0.008)
    assert t1w["EchoTime"] == pytest.approx(0.003)
    assert t1w["FlipAngle"] == 12 and t1w["MagneticFieldStrength"] == 3
    ce = json.loads((anat / "sub-01_ce-gadolinium_T1w.json").read_text())
    assert ce["ContrastBolusIngredient"] == "GADOLINIUM"
    t2w = json.loads((anat / "sub-01_T2w.json").read_text())
    assert t2w["RepetitionTime"] == pytest.approx(4.0) and t2w["EchoTime"] == pytest.approx(0.1)
    dwi = json.loads((cohort[0] / "sub-01" / "dwi" / "sub-01_dwi.json").read_text())
    assert dwi["EchoTime"] == pytest.approx(0.08)
    assert all(s["CesynthSyntheticPhantom"] for s in (t1w, ce, t2w, dwi))


def test_dwi_gradient_files_match_volumes(cohort: tuple[Path, pd.DataFrame]) -> None:
    dwi_dir = cohort[0] / "sub-02" / "dwi"
    image = nib.load(str(dwi_dir / "sub-02_dwi.nii.gz"))
    bvals = np.loadtxt(dwi_dir / "sub-02_dwi.bval")
    bvecs = np.loadtxt(dwi_dir / "sub-02_dwi.bvec")
    assert image.ndim == 4 and image.shape[3] == 7
    assert bvals.shape == (7,) and bvecs.shape == (3, 7)
    np.testing.assert_array_equal(bvals, [0, 500, 500, 500, 1000, 1000, 1000])
    norms = np.linalg.norm(bvecs, axis=0)
    np.testing.assert_allclose(norms[bvals > 0], 1.0)
    np.testing.assert_array_equal(norms[bvals == 0], 0.0)
    # Diffusion weighting darkens the brain: mean signal falls with b.
    data = np.asarray(image.dataobj)
    assert data[..., 0].mean() > data[..., 1].mean() > data[..., 4].mean()


def test_modalities_have_their_own_grids(cohort: tuple[Path, pd.DataFrame]) -> None:
    root = cohort[0]
    images = {name: nib.load(str(root / "sub-01" / relative)) for name, relative in {
        "T1w": "anat/sub-01_T1w.nii.gz", "ceT1w": "anat/sub-01_ce-gadolinium_T1w.nii.gz",
        "T2w": "anat/sub-01_T2w.nii.gz", "dwi": "dwi/sub-01_dwi.nii.gz"}.items()}
    grids = [(img.shape[:3], tuple(np.round(img.affine, 3).ravel())) for img in images.values()]
    assert len(set(grids)) == 4
    assert images["T2w"].header.get_zooms()[2] > 2 * images["T2w"].header.get_zooms()[0]
    assert images["dwi"].header.get_zooms()[0] > images["ceT1w"].header.get_zooms()[0]
    for img in images.values():
        assert np.isfinite(np.asarray(img.dataobj)).all()


def test_set_b_tumor_mask_on_ce_grid(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, plan = cohort
    for sub, set_name in zip(plan["participant_id"], plan["set"], strict=True):
        mask_path = root / f"derivatives/tumor_masks/{sub}/anat/{sub}_desc-tumor_mask.nii.gz"
        assert mask_path.is_file() == (set_name == "B")
    sub = plan.loc[plan["set"] == "B", "participant_id"].iloc[0]
    mask = nib.load(str(root / f"derivatives/tumor_masks/{sub}/anat/{sub}_desc-tumor_mask.nii.gz"))
    ce = nib.load(str(root / sub / "anat" / f"{sub}_ce-gadolinium_T1w.nii.gz"))
    assert mask.shape == ce.shape
    np.testing.assert_allclose(mask.affine, ce.affine)
    tumor = np.asarray(mask.dataobj) > 0
    truth = root / "derivatives" / "phantom" / sub
    enhancing = _load(truth / f"{sub}_space-ceT1w_desc-enhancing_mask.nii.gz")
    brain = _load(truth / f"{sub}_space-ceT1w_desc-brain_mask.nii.gz")
    assert tumor.sum() > 0 and tumor.sum() >= (enhancing > 0).sum()
    assert np.all(brain[tumor] > 0)
    # The enhancing rim is brighter on CE-T1 than the rest of the brain.
    ce_data = np.asarray(ce.dataobj)
    assert ce_data[enhancing > 0].mean() > 1.2 * ce_data[(brain > 0) & ~tumor].mean()
    assert not (root / "derivatives/tumor_masks/sub-01").exists()
    assert (_load(root / "derivatives/phantom/sub-01/"
                  "sub-01_space-ceT1w_desc-enhancing_mask.nii.gz") == 0).all()


def test_true_adc_file_is_the_resampled_parameter_map(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, plan = cohort
    row = plan.iloc[1]
    scans = phantom.simulate_subject(int(row["subject_seed"]), row["lesion_types"], SETTINGS)
    sub = row["participant_id"]
    saved = nib.load(str(root / f"derivatives/phantom/{sub}/{sub}_desc-trueadc_adc.nii.gz"))
    dwi = nib.load(str(root / sub / "dwi" / f"{sub}_dwi.nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj), scans.true_adc)
    np.testing.assert_allclose(saved.affine, dwi.affine)
    assert saved.shape == dwi.shape[:3]
    # Deterministic: the same seed rebuilds the same noisy images.
    np.testing.assert_array_equal(np.asarray(dwi.dataobj), scans.images["dwi"])


def test_same_seed_same_arrays_other_seed_differs(cohort: tuple[Path, pd.DataFrame],
                                                   tmp_path: Path) -> None:
    root, plan = cohort
    row = plan.iloc[0]
    again = phantom.write_subject(tmp_path / "again", row, SETTINGS)
    other_row = row.copy()
    other_row["subject_seed"] = int(row["subject_seed"]) + 1
    other = phantom.write_subject(tmp_path / "other", other_row, SETTINGS)
    original = phantom.subject_paths(root, row["participant_id"])
    for key in ("T1w", "ceT1w", "T2w", "dwi", "true_adc", "brain_mask"):
        np.testing.assert_array_equal(_load(again[key]), _load(original[key]), err_msg=key)
    assert not np.array_equal(_load(other["T1w"]), _load(original["T1w"]))
    assert json.loads(again["transforms"].read_text()) == json.loads(
        original["transforms"].read_text())


def _resample(moving: nib.Nifti1Image, fixed: nib.Nifti1Image,
              fixed_to_moving_world: np.ndarray) -> np.ndarray:
    """Moving image on the fixed grid, for a world-to-world fixed -> moving matrix."""
    to_moving_voxel = np.linalg.inv(moving.affine) @ fixed_to_moving_world @ fixed.affine
    voxels = np.indices(fixed.shape[:3]).reshape(3, -1)
    coords = to_moving_voxel[:3, :3] @ voxels + to_moving_voxel[:3, 3:]
    data = np.asarray(moving.dataobj, dtype=np.float64)
    return ndimage.map_coordinates(data, coords, order=1).reshape(fixed.shape[:3])


def _head_centroid_world(image: nib.Nifti1Image) -> np.ndarray:
    data = np.asarray(image.dataobj, dtype=np.float64)
    if data.ndim == 4:
        data = data[..., 0]
    head = ndimage.binary_fill_holes(ndimage.binary_closing(data > 0.15 * data.max(),
                                                            iterations=2))
    centroid = np.argwhere(head).mean(axis=0)
    return image.affine[:3, :3] @ centroid + image.affine[:3, 3]


def test_true_transforms_describe_the_misplacement(cohort: tuple[Path, pd.DataFrame]) -> None:
    root = cohort[0]
    sub = "sub-02"
    transforms = json.loads(
        (root / f"derivatives/phantom/{sub}/{sub}_desc-transforms.json").read_text())
    assert "convention" in transforms
    ce = nib.load(str(root / sub / "anat" / f"{sub}_ce-gadolinium_T1w.nii.gz"))
    ce_data = np.asarray(ce.dataobj, dtype=np.float64)
    head = ce_data > 0.15 * ce_data.max()
    files = {"T1w": f"anat/{sub}_T1w.nii.gz", "T2w": f"anat/{sub}_T2w.nii.gz",
             "dwi": f"dwi/{sub}_dwi.nii.gz"}
    for modality, relative in files.items():
        moving = nib.load(str(root / sub / relative))
        forward = np.array(transforms[f"ceT1w_to_{modality}"])
        np.testing.assert_allclose(forward @ np.array(transforms[f"{modality}_to_ceT1w"]),
                                   np.eye(4), atol=1e-9)
        # Head centroids correspond through the transform.
        mapped = forward[:3, :3] @ _head_centroid_world(ce) + forward[:3, 3]
        assert np.linalg.norm(mapped - _head_centroid_world(moving)) < 3.0, modality
        if modality == "T1w":
            aligned = _resample(moving, ce, forward)
            naive = _resample(moving, ce, np.eye(4))
            r_aligned = np.corrcoef(aligned[head], ce_data[head])[0, 1]
            r_naive = np.corrcoef(naive[head], ce_data[head])[0, 1]
            # Below 1 only through noise, bias fields, enhancement and partial volume.
            assert r_aligned > 0.8
            assert r_aligned > r_naive + 0.3


def test_guard_demo_target_protects_other_datasets(cohort: tuple[Path, pd.DataFrame],
                                                   tmp_path: Path) -> None:
    phantom.guard_demo_target(tmp_path / "missing")
    phantom.guard_demo_target(cohort[0])  # an earlier phantom may be rebuilt
    real = tmp_path / "real"
    real.mkdir()
    (real / "dataset_description.json").write_text('{"Name": "patients", "BIDSVersion": "1.9.0"}')
    with pytest.raises(InputError):
        phantom.guard_demo_target(real)
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "sub-01").mkdir(parents=True)
    with pytest.raises(InputError):
        phantom.guard_demo_target(unlabelled)


# ----------------------------------------------------------------------------- lesion archetypes


def test_new_tissues_are_drawn_after_the_old_ones() -> None:
    # One generator draws the tissues in TISSUE_RANGES order: the archetypes' tissues come last,
    # so a subject's earlier tissues keep the values they had before the archetypes existed.
    names = list(phantom.TISSUE_RANGES)
    assert names[-3:] == ["solid", "lgg", "gliosis"]
    assert names[:-3] == ["wm", "gm", "csf", "edema", "rim", "core", "vessel", "fat", "skull"]
    rng = np.random.default_rng(5)
    before = {name: {key: float(rng.uniform(low, high)) for key, (low, high) in ranges.items()}
              for name, ranges in list(phantom.TISSUE_RANGES.items())[:-3]}
    tissues = phantom.tissue_parameters(np.random.default_rng(5))
    for name, values in before.items():
        assert phantom.TissueParams(**values) == tissues[name], name
    # Labels were appended too: the older indices did not move.
    assert phantom.LABELS[:10] == ("background", "csf", "gm", "wm", "edema", "rim", "core",
                                   "vessel", "fat", "skull")


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_archetype_parameters_within_spec_ranges(archetypes: phantom.Anatomy, kind: str) -> None:
    placed = [i for i, tumor in enumerate(archetypes.tumors, start=1) if tumor["type"] == kind]
    assert placed, kind
    label_names = np.array(phantom.LABELS)
    for index in placed:
        region = archetypes.lesion_ids == index
        tissues = set(label_names[np.unique(archetypes.labels[region])])
        assert tissues <= TYPE_TISSUES[kind] and SIGNATURE[kind][0] in tissues, tissues
        for tissue in tissues:
            inside = region & (archetypes.labels == phantom.LABEL[tissue])
            t1, t2, _, adc, agent = SPEC_TABLE[tissue]
            for name, (low, high), scale in (("t1_ms", t1, 1), ("t2_ms", t2, 1),
                                             ("adc_mm2_s", adc, 1e-3), ("agent_mM", agent, 1)):
                values = archetypes.maps[name][inside]
                assert values.min() >= low * scale * (1 - 1e-6), (tissue, name)
                assert values.max() <= high * scale * (1 + 1e-6), (tissue, name)
        agent = archetypes.maps["agent_mM"][region]
        enhancing_part = np.isin(archetypes.labels[region],
                                 [phantom.LABEL["rim"], phantom.LABEL["solid"]])
        # Agent exactly in the enhancing part: rim and solid lesions only, never their edema
        # or necrotic core, never a non-enhancing lesion.
        np.testing.assert_array_equal(agent > 0, enhancing_part)
        assert enhancing_part.any() == (kind in ("rim", "solid"))


def test_lesions_do_not_overlap_and_records_match_the_plan(archetypes: phantom.Anatomy) -> None:
    planned = phantom.planned_lesions(11, ALL_TYPES + ["solid"], SETTINGS.voxel_mm)
    assert len(archetypes.tumors) == len(planned) == 5
    for tumor, plan in zip(archetypes.tumors, planned, strict=True):
        assert tumor["type"] == plan["type"]
        assert tumor["diameter_mm"] == pytest.approx(plan["diameter_mm"])
        assert {"center_voxel", "center_mm", "radius_mm", "extent_radius_mm"} <= set(tumor)
    # Each lesion's extent is its own (one id per voxel) and holds its centre.
    ids = archetypes.lesion_ids
    for index, tumor in enumerate(archetypes.tumors, start=1):
        assert ids[tuple(tumor["center_voxel"])] == index
        assert (ids == index).sum() == tumor["anatomy_voxels"] > 0
    lesion_tissue = np.isin(archetypes.labels, [phantom.LABEL[t] for t in (
        "edema", "rim", "core", "solid", "lgg", "gliosis")])
    np.testing.assert_array_equal(lesion_tissue, ids > 0)


def test_solid_lesions_include_small_ones_across_a_cohort_plan() -> None:
    plan = phantom.plan_cohort(40, seed=1, n_set_b=10, fractions=SplitFractions(0.1, 0.35))
    diameters = [lesion["diameter_mm"] for row in plan.itertuples()
                 for lesion in phantom.planned_lesions(row.subject_seed, row.lesion_types, 2.0)
                 if lesion["type"] == "solid"]
    assert len(diameters) >= 10
    assert all(3.0 <= d <= 30.0 for d in diameters)
    assert sum(d <= 10.0 for d in diameters) >= 3
    assert sum(d > 10.0 for d in diameters) >= 3


def test_small_solid_lesion_keeps_a_voxel_at_demo_resolution() -> None:
    settings = phantom.PhantomSettings(voxel_mm=2.0)
    seed = next(s for s in range(1000)
                if phantom.planned_lesions(s, ["solid"], 2.0)[0]["diameter_mm"] < 4.0)
    anatomy = phantom.build_anatomy(seed, ["solid"], settings)
    (tumor,) = anatomy.tumors
    assert tumor["diameter_mm"] < 4.0
    assert ((anatomy.lesion_ids == 1) & (anatomy.labels == phantom.LABEL["solid"])).sum() >= 1
    grid = phantom.acquisition_grids(settings)["ceT1w"]
    pose = phantom.rigid_matrix([5.0, -4.0, 3.0], [1.3, -0.7, 0.4])
    dseg, instances = phantom.sample_lesion_truth(anatomy, grid, pose)
    agent = phantom.sample_parameter_maps(anatomy, grid, pose, names=("agent_mM",))["agent_mM"]
    enhancing = (instances == 1) & (dseg == 4)
    assert enhancing.sum() >= 1 and np.all(agent[enhancing] > 0)


def _fractions_on(anatomy: phantom.Anatomy, region: np.ndarray, grid: phantom.Grid,
                  pose: np.ndarray) -> np.ndarray:
    return phantom.sample_on_grid({"r": region.astype(np.float32)}, anatomy.grid, grid,
                                  pose)["r"]


def test_written_images_show_each_archetypes_signature(
        archetype_subject: tuple[dict[str, Path], phantom.SubjectScans]) -> None:
    """Per lesion: its signature tissue against the white matter around it, each scan on its own
    grid (so no resampling of images): CE-T1 over T1 shows enhancement only for rim and solid
    lesions; T2 is bright in the non-enhancing lesion and the T2 abnormality."""
    paths, scans = archetype_subject
    anatomy = scans.anatomy
    images = {modality: _load(paths[modality]).astype(np.float64)
              for modality in ("T1w", "ceT1w", "T2w")}
    tested = set()
    for index, tumor in enumerate(anatomy.tumors, start=1):
        tissue, _ = SIGNATURE[tumor["type"]]
        extent = anatomy.lesion_ids == index
        lesion = extent & (anatomy.labels == phantom.LABEL[tissue])
        around = (ndimage.binary_dilation(extent, iterations=4)
                  & ~ndimage.binary_dilation(extent, iterations=1)
                  & (anatomy.labels == phantom.LABEL["wm"]))
        ratio = {}
        enhancing = tumor["type"] in ("rim", "solid")
        for modality in ("T1w", "ceT1w") if enhancing else ("T1w", "ceT1w", "T2w"):
            grid, pose, image = scans.grids[modality], scans.poses[modality], images[modality]
            inside = _fractions_on(anatomy, lesion, grid, pose) >= 0.75
            reference = _fractions_on(anatomy, around, grid, pose) >= 0.75
            if not inside.any() or reference.sum() < 5:
                break
            ratio[modality] = np.median(image[inside]) / np.median(image[reference])
        else:
            enhancement = ratio["ceT1w"] / ratio["T1w"]
            if enhancing:
                assert enhancement > 1.3, (tumor["type"], enhancement)
            else:
                assert abs(enhancement - 1) < 0.1, (tumor["type"], enhancement)
                assert ratio["T2w"] > 1.3, (tumor["type"], ratio["T2w"])
            tested.add(tumor["type"])
    assert tested == set(ALL_TYPES)


def test_lesion_truth_files_agree(
        archetype_subject: tuple[dict[str, Path], phantom.SubjectScans]) -> None:
    paths, scans = archetype_subject
    images = {key: nib.load(str(paths[key])) for key in (
        "ceT1w", "enhancing_mask", "agent_map", "lesion_dseg", "lesion_instances", "tumor_mask")}
    for key, image in images.items():
        assert image.shape == images["ceT1w"].shape, key
        np.testing.assert_allclose(image.affine, images["ceT1w"].affine, err_msg=key)
    data = {key: np.asarray(image.dataobj) for key, image in images.items()}
    assert data["agent_map"].dtype == np.float32
    assert data["lesion_dseg"].dtype == np.uint8 and data["lesion_instances"].dtype == np.uint16
    assert data["enhancing_mask"].dtype == np.uint8
    dseg, instances, agent = data["lesion_dseg"], data["lesion_instances"], data["agent_map"]
    assert set(np.unique(dseg)) == {0, 1, 2, 4}
    # The agent map is the noise-free agent on the CE-T1 grid: lesions and vessels.
    expected = phantom.sample_parameter_maps(scans.anatomy, scans.grids["ceT1w"],
                                             scans.poses["ceT1w"], names=("agent_mM",))
    np.testing.assert_array_equal(agent, expected["agent_mM"].astype(np.float32))
    assert np.all(agent[dseg == 4] > 0)
    assert (agent[dseg == 0] > 0).sum() > 0  # vessels enhance but are no lesion
    np.testing.assert_array_equal(data["enhancing_mask"], (dseg == 4).astype(np.uint8))
    np.testing.assert_array_equal(data["tumor_mask"] > 0, np.isin(dseg, (4, 1)))
    assert np.all(instances[dseg > 0] > 0)
    sidecar = json.loads(paths["lesion_instances_sidecar"].read_text())
    parameters = json.loads(paths["parameters"].read_text())
    types = [tumor["type"] for tumor in scans.anatomy.tumors]
    assert [lesion["type"] for lesion in sidecar["lesions"]] == types
    assert [tumor["type"] for tumor in parameters["tumors"]] == types
    assert parameters["lesion_types_requested"] == ALL_TYPES + ["solid"]
    for lesion in sidecar["lesions"]:
        classes = set(np.unique(dseg[instances == lesion["label"]]))
        assert lesion["enhancing"] == (lesion["type"] in ("rim", "solid"))
        assert lesion["diameter_mm"] > 0 and lesion["voxels"] >= 1
        # Every lesion is in the truth with its signature class, and only with its classes.
        assert SIGNATURE[lesion["type"]][1] in classes, lesion
        allowed = {"rim": {0, 1, 2, 4}, "solid": {0, 2, 4}, "nonenhancing": {0, 1},
                   "t2abnormality": {0, 2}}[lesion["type"]]
        assert classes <= allowed, lesion
        if not lesion["enhancing"]:
            assert np.mean(agent[instances == lesion["label"]] > 0) < 0.05, lesion


def test_truth_files_names_and_workflow_keys() -> None:
    truth = phantom.truth_files("sub-01")
    prefix = "derivatives/phantom/sub-01/sub-01_space-ceT1w_desc-"
    assert truth["agent_map"] == prefix + "agent_map.nii.gz"
    assert truth["lesion_dseg"] == prefix + "lesion_dseg.nii.gz"
    assert truth["lesion_instances"] == prefix + "lesions_dseg.nii.gz"
    assert truth["lesion_instances_sidecar"] == prefix + "lesions_dseg.json"
    assert truth["enhancing_mask"] == prefix + "enhancing_mask.nii.gz"
    common = (REPO / "rules" / "common.smk").read_text()
    for rule_key, key in (("true_agent", "agent_map"), ("true_lesion_dseg", "lesion_dseg"),
                          ("true_lesion_instances", "lesion_instances"),
                          ("true_lesion_instances_sidecar", "lesion_instances_sidecar")):
        assert f'"{rule_key}": "{key}"' in common


def _demo_configs() -> list[tuple[str, dict]]:
    """(name, demo and sets) of config.yaml and of every profile that builds the demo."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    configs = [("config.yaml", base)]
    for path in sorted((REPO / "config" / "profiles").glob("*.yaml")):
        profile = yaml.safe_load(path.read_text()) or {}
        merged = {section: {**base.get(section, {}), **(profile.get(section) or {})}
                  for section in ("demo", "sets")}
        if merged["demo"].get("enabled"):
            configs.append((path.name, merged))
    return configs


def _check_validation_coverage(plan: pd.DataFrame, fractions: SplitFractions) -> int:
    """Assert the stratification rules; return the number of validation subjects."""
    splits = []
    for row in plan.itertuples():
        split = "test" if row.set == "B" else participant_split(
            row.participant_id.removeprefix("sub-"), fractions)
        splits.append(split)
        kinds = [kind for kind in row.lesion_types.split(";") if kind]
        assert len(kinds) == row.n_tumors
        if split == "validation":
            assert kinds, row
        elif row.Index == 0 and row.set == "A":
            assert not kinds, "sub-01 stays lesion-free unless it is a validation subject"
        elif split == "test":
            assert len(set(kinds)) >= 2, row  # test subjects and Set B hold mixtures
    for name in ("validation", "train"):
        subjects = plan[[split == name for split in splits]]
        if name == "train" and len(subjects) < 2:  # sub-01 alone stays lesion-free
            continue
        if len(subjects):
            covered = {kind for kinds in subjects["lesion_types"] for kind in kinds.split(";")}
            assert covered - {""} == set(phantom.LESION_TYPES), name
    return sum(split == "validation" for split in splits)


@pytest.mark.parametrize("name, config", _demo_configs(), ids=lambda value: str(value)[:20])
def test_validation_and_training_subjects_of_the_demo_configs_hold_every_lesion_type(name: str,
                                                                       config: dict) -> None:
    demo = config["demo"]
    fractions = SplitFractions.from_config(config["sets"])
    plan = phantom.plan_cohort(demo["subjects"], demo["seed"], demo["set_b_subjects"],
                               fractions=fractions)
    _check_validation_coverage(plan, fractions)


def test_validation_coverage_for_many_cohort_sizes() -> None:
    with_validation = 0
    for fractions in (SplitFractions(0.1, 0.35), SplitFractions(0.12, 0.2),
                      SplitFractions(0.3, 0.3)):
        for n_subjects in range(1, 41):
            n_set_b = n_subjects // 4
            plan = phantom.plan_cohort(n_subjects, seed=n_subjects, n_set_b=n_set_b,
                                       fractions=fractions)
            with_validation += _check_validation_coverage(plan, fractions) > 0
    assert with_validation > 60  # the rule was exercised, not vacuously true


# ----------------------------------------------------------------------------- FLAIR


def test_flair_signal_equation_and_csf_null() -> None:
    # S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2), by hand
    expected = 0.8 * abs(1 - 2 * math.exp(-2500 / 1500) + math.exp(-9000 / 1500)) * math.exp(-0.9)
    assert phantom.inversion_recovery_signal(0.8, 1500.0, 100.0, tr_ms=9000.0, te_ms=90.0,
                                             ti_ms=2500.0) == pytest.approx(expected, rel=1e-12)
    ti = phantom.null_inversion_time_ms(4250.0, 9000.0)
    assert phantom.inversion_recovery_signal(1.0, 4250.0, 1800.0, 9000.0, 90.0, ti) == (
        pytest.approx(0.0, abs=1e-12))
    # the phantom's FLAIR: TI about 2500 ms at TR 9000 ms, nulling the CSF's mid-range T1
    assert phantom.FLAIR_IR["tr_ms"] == 9000.0 and 2300 < phantom.FLAIR_IR["ti_ms"] < 2600


def test_flair_edema_is_brighter_than_white_matter_at_the_ranges_worst_corner() -> None:
    """The edema's longest T1 and shortest T2 against the white matter's shortest T1 and longest
    T2: the FLAIR's TE keeps every edema a subject can draw above every white matter."""
    edema, wm = phantom.TISSUE_RANGES["edema"], phantom.TISSUE_RANGES["wm"]
    darkest_edema = phantom.inversion_recovery_signal(
        edema["pd"][0], edema["t1_ms"][1], edema["t2_ms"][0], **phantom.FLAIR_IR)
    brightest_wm = phantom.inversion_recovery_signal(
        wm["pd"][0], wm["t1_ms"][0], wm["t2_ms"][1], **phantom.FLAIR_IR)
    assert darkest_edema > brightest_wm


def _flair_signal(tissue: str, corner: str = "mid") -> float:
    """Noise-free FLAIR signal of a tissue at the middle (or an end) of its SPEC ranges."""
    ranges = phantom.TISSUE_RANGES[tissue]
    pick = {"mid": lambda r: sum(r) / 2, "low": min, "high": max}[corner]
    return float(phantom.inversion_recovery_signal(
        ranges["pd"][0], pick(ranges["t1_ms"]), pick(ranges["t2_ms"]), **phantom.FLAIR_IR))


@pytest.mark.parametrize("corner", ["low", "mid", "high"])
def test_flair_darkens_csf_and_brightens_edema_and_t2_lesions(corner: str) -> None:
    white_matter = _flair_signal("wm", corner)
    # every CSF T1 the phantom draws stays near the null (the CSF is the T2w's brightest tissue)
    assert _flair_signal("csf", corner) < 0.25 * white_matter
    for tissue in ("edema", "rim", "lgg", "gliosis"):
        assert _flair_signal(tissue, corner) > 1.1 * white_matter, tissue


@pytest.fixture(scope="module")
def flair_subject(tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[dict[str, Path], dict[str, Path], phantom.SubjectScans]:
    """The archetype subject written with and without a FLAIR, and its simulation."""
    row = {"participant_id": "sub-09", "set": "B", "n_tumors": 5,
           "lesion_types": ";".join(ALL_TYPES + ["solid"]), "subject_seed": 11}
    with_flair = phantom.write_subject(tmp_path_factory.mktemp("flair"), row, SETTINGS,
                                       flair=True)
    without = phantom.write_subject(tmp_path_factory.mktemp("noflair"), row, SETTINGS)
    return with_flair, without, phantom.simulate_subject(11, row["lesion_types"], SETTINGS,
                                                         flair=True)


def test_writing_flair_leaves_every_other_file_bit_identical(flair_subject) -> None:
    with_flair, without, _ = flair_subject
    assert set(with_flair) - set(without) == {"FLAIR", "FLAIR_json"}
    assert with_flair["FLAIR"].name == "sub-09_FLAIR.nii.gz"
    for key, path in without.items():
        if key == "transforms":  # gains the FLAIR's transform, the others unchanged
            flair_truth = json.loads(with_flair[key].read_text())
            for name, value in json.loads(path.read_text()).items():
                if name == "head_pose":
                    assert flair_truth[name] == {**value, "FLAIR": flair_truth[name]["FLAIR"]}
                else:
                    assert flair_truth[name] == value, name
            assert {"ceT1w_to_FLAIR", "FLAIR_to_ceT1w"} <= set(flair_truth)
        else:
            assert with_flair[key].read_bytes() == path.read_bytes(), key
    sidecar = json.loads(with_flair["FLAIR_json"].read_text())
    assert sidecar["InversionTime"] == phantom.FLAIR_IR["ti_ms"] / 1000
    assert (sidecar["RepetitionTime"], sidecar["EchoTime"]) == (9.0, 0.12)


def test_written_flair_has_dark_csf_and_bright_lesions(flair_subject) -> None:
    """On the FLAIR's own grid: ventricles/sulci dark, edema and the T2-bright lesions brighter
    than the white matter, as the equation says once noise, bias and partial volume are in."""
    with_flair, _, scans = flair_subject
    anatomy, grid, pose = scans.anatomy, scans.grids["FLAIR"], scans.poses["FLAIR"]
    image = _load(with_flair["FLAIR"]).astype(np.float64)

    def median_in(tissue: str) -> float:
        region = (anatomy.labels == phantom.LABEL[tissue]) & (anatomy.indicators["brain"] > 0.5)
        inside = _fractions_on(anatomy, region, grid, pose) >= 0.9
        assert inside.sum() >= 3, tissue
        return float(np.median(image[inside]))

    white_matter = median_in("wm")
    assert median_in("csf") < 0.3 * white_matter
    for tissue in ("edema", "lgg", "gliosis"):
        assert median_in(tissue) > 1.15 * white_matter, tissue
    transforms = json.loads(with_flair["transforms"].read_text())
    np.testing.assert_allclose(np.array(transforms["ceT1w_to_FLAIR"]),
                               np.linalg.inv(pose) @ scans.poses["ceT1w"], atol=1e-12)


def test_layout_flair_is_the_inversion_recovery_image(tmp_path: Path) -> None:
    """The published layouts' FLAIR follows the equation with the case's own tissue parameters:
    each tissue's median over the white matter's is the equation's ratio (within noise and
    partial volume), CSF dark."""
    from cesynth.phantom.layouts import write_layout_cohort

    case = write_layout_cohort(tmp_path / "brats", "brats", 1, seed=2, settings=SETTINGS,
                               naming="2017")[0]
    flair = _load(next(case.glob("*_flair.nii.gz"))).astype(np.float64)
    row = phantom.plan_cohort(1, 2, n_set_b=1, max_tumors=SETTINGS.max_tumors).iloc[0]
    anatomy = phantom.build_anatomy(int(row.subject_seed), row.lesion_types, SETTINGS)
    brain = anatomy.indicators["brain"] > 0.5

    def signal(tissue: str) -> float:
        p = anatomy.tissues[tissue]
        return float(phantom.inversion_recovery_signal(p.pd, p.t1_ms, p.t2_ms,
                                                       **phantom.FLAIR_IR))

    def median(tissue: str) -> float:
        inside = ndimage.binary_erosion(anatomy.labels == phantom.LABEL[tissue]) & brain
        return float(np.median(flair[inside]))

    assert median("csf") < 0.3 * median("wm")
    for tissue in ("gm", "edema"):
        assert median(tissue) / median("wm") == pytest.approx(signal(tissue) / signal("wm"),
                                                              rel=0.1), tissue
