"""Registration onto the CE-T1: accuracy against known transforms, conventions, determinism, errors.

Every test runs real ANTs registrations on real NIfTI files written to a temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import affine_transform

from cesynth import ants_transforms, phantom
from cesynth import registration as reg
from cesynth.io import InputError, save_nifti

THREADS = 1  # with one ITK thread and a fixed seed ANTs gives the same transform every run
VOXEL_MM = 3.0
MAX_MEAN_ERROR_MM = 1.0


@dataclass(frozen=True)
class Subject:
    """Paths of one phantom subject and the true CE-T1 -> modality world mappings (RAS)."""

    ce_t1: Path
    t1w: Path
    t2w: Path
    dwi: Path
    bval: Path
    true_adc: Path  # on the DWI grid
    brain_mask: Path  # on the CE-T1 grid
    truth: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """One phantom subject at 3 mm (T2w and DWI on thick 7.5 mm slices), each scan misplaced."""
    bids = tmp_path_factory.mktemp("phantom")
    plan = phantom.make_cohort(bids, 1, seed=3, settings=phantom.PhantomSettings(voxel_mm=VOXEL_MM))
    paths = phantom.subject_paths(bids, plan["participant_id"].iloc[0])
    truth = json.loads(paths["transforms"].read_text())
    return Subject(paths["ceT1w"], paths["T1w"], paths["T2w"], paths["dwi"], paths["bval"],
                   paths["true_adc"], paths["brain_mask"],
                   {m: np.array(truth[f"ceT1w_to_{m}"]) for m in ("T1w", "T2w", "dwi")})


@pytest.fixture(scope="module")
def registered(subject: Subject, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each modality registered once to the CE-T1 (shared by the accuracy tests)."""
    out = tmp_path_factory.mktemp("reg_out")
    results = {
        name: reg.register_to_reference(subject.ce_t1, moving, out / f"{name}.nii.gz",
                                        out / f"from-{name}_xfm.mat", threads=THREADS)
        for name, moving in (("T1w", subject.t1w), ("T2w", subject.t2w))
    }
    results["dwi"] = reg.register_dwi_to_reference(
        subject.ce_t1, subject.dwi, subject.bval, subject.true_adc, out / "adc.nii.gz",
        out / "from-dwi_xfm.mat", threads=THREADS)
    return results


@pytest.mark.parametrize("modality", ["T1w", "T2w", "dwi"])
def test_displacement_below_1mm_and_mi_rises(subject: Subject, registered: dict,
                                             modality: str) -> None:
    result = registered[modality]
    error = ants_transforms.displacement_error_mm(result.transform_path, subject.truth[modality],
                                      subject.brain_mask)
    print(f"{modality}: {error} in {result.seconds:.1f} s, MI {result.mi_before:.3f} -> "
          f"{result.mi_after:.3f}")
    assert error["mean_mm"] < MAX_MEAN_ERROR_MM
    assert result.mi_after > result.mi_before


@pytest.mark.parametrize("modality", ["T1w", "T2w"])
def test_output_is_on_ce_grid(subject: Subject, registered: dict, modality: str) -> None:
    fixed = nib.load(subject.ce_t1)
    out = nib.load(registered[modality].output_path)
    assert out.shape == fixed.shape
    np.testing.assert_allclose(out.affine, fixed.affine, atol=1e-5)
    assert out.get_data_dtype() == np.float32


def test_adc_lands_on_ce_grid_with_true_values(subject: Subject, registered: dict) -> None:
    fixed = nib.load(subject.ce_t1)
    adc = nib.load(registered["dwi"].output_path)
    assert adc.shape == fixed.shape
    np.testing.assert_allclose(adc.affine, fixed.affine, atol=1e-5)
    mask = np.asarray(nib.load(subject.brain_mask).dataobj) > 0
    # the truth, resampled independently of the code under test (scipy, true transform)
    true_adc = nib.load(subject.true_adc)
    voxel_map = np.linalg.inv(true_adc.affine) @ subject.truth["dwi"] @ fixed.affine
    expected = affine_transform(true_adc.get_fdata(), voxel_map, output_shape=fixed.shape, order=1)
    median = float(np.median(adc.get_fdata()[mask]))
    assert median == pytest.approx(float(np.median(expected[mask])), rel=0.03)


def test_translation_round_trip_and_ras_lps(tmp_path: Path) -> None:
    shift_ras = np.eye(4)
    shift_ras[:3, 3] = [10.0, -4.0, 6.0]
    xfm = tmp_path / "shift.mat"
    ants.write_transform(ants_transforms.ras_to_ants_transform(shift_ras), str(xfm))
    stored = ants_transforms.read_ants_transform(xfm)
    # ANTs stores LPS: x and y translations change sign, z does not
    np.testing.assert_allclose(np.asarray(stored.parameters)[9:], [-10.0, 4.0, 6.0], atol=1e-5)
    np.testing.assert_allclose(ants_transforms.ants_transform_to_ras(stored), shift_ras, atol=1e-5)

    # A fixed->moving shift of +d moves image content by -d on the fixed grid.
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40.0, -40.0, -40.0]
    blob = np.zeros((40, 40, 40), np.float32)
    blob[22:28, 14:20, 18:24] = 1.0
    save_nifti(blob, affine, tmp_path / "blob.nii.gz")
    out = reg.apply_registration(tmp_path / "blob.nii.gz", tmp_path / "blob.nii.gz", xfm,
                                 tmp_path / "moved.nii.gz")

    def centroid(path: Path) -> np.ndarray:
        img = nib.load(path)
        data = img.get_fdata()
        ijk = np.argwhere(data > 0.5)
        return nib.affines.apply_affine(img.affine, ijk).mean(axis=0)

    np.testing.assert_allclose(centroid(out) - centroid(tmp_path / "blob.nii.gz"),
                               [-10.0, 4.0, -6.0], atol=0.5)


def test_same_seed_same_matrix(subject: Subject, tmp_path: Path) -> None:
    # ITK fixes its thread count at first use in a process: run in a fresh one with threads=1.
    script = (
        "import sys\n"
        "from cesynth import registration as reg\n"
        "for run in '01':\n"
        "    reg.register_to_reference(sys.argv[1], sys.argv[2], f'{sys.argv[3]}/{run}.nii.gz',\n"
        "                              f'{sys.argv[3]}/{run}.mat', threads=1, seed=7)\n")
    subprocess.run([sys.executable, "-c", script, str(subject.ce_t1), str(subject.t2w),
                    str(tmp_path)], check=True, timeout=120)
    first, second = (ants_transforms.ants_transform_to_ras(
                         ants_transforms.read_ants_transform(tmp_path / f"{run}.mat"))
                     for run in "01")
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_constant_moving_image_is_input_error(subject: Subject, tmp_path: Path) -> None:
    fixed = nib.load(subject.ce_t1)
    flat = tmp_path / "flat.nii.gz"
    save_nifti(np.full(fixed.shape, 3.0, np.float32), fixed.affine, flat)
    with pytest.raises(InputError, match="flat.nii.gz"):
        reg.register_to_reference(subject.ce_t1, flat, tmp_path / "o.nii.gz", tmp_path / "o.mat")
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))


def test_unreadable_moving_file_is_input_error(subject: Subject, tmp_path: Path) -> None:
    broken = tmp_path / "broken_T2w.nii.gz"
    broken.write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match="broken_T2w.nii.gz"):
        reg.register_to_reference(subject.ce_t1, broken, tmp_path / "o.nii.gz", tmp_path / "o.mat")
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.mat").exists()


def test_dwi_without_b0_is_input_error(subject: Subject, tmp_path: Path) -> None:
    bval = tmp_path / "no_b0.bval"
    bval.write_text("500 " * 7 + "\n")
    with pytest.raises(InputError, match="no b=0"):
        reg.register_dwi_to_reference(subject.ce_t1, subject.dwi, bval, subject.true_adc,
                                      tmp_path / "adc.nii.gz", tmp_path / "x.mat")


@pytest.mark.parametrize("spacing, shrink, sigmas", [
    ((1.0, 1.0, 1.0), (8, 4, 2), (3, 2, 1)),   # clinical 1 mm: levels at 8, 4 and 2 mm
    ((0.9, 0.9, 3.0), (8, 4, 2), (3, 2, 1)),   # the finest axis decides
    ((0.5, 0.5, 0.5), (16, 8, 4), (4, 3, 2)),
    ((1.2, 1.2, 1.2), (4, 2, 1), (2, 1, 0)),   # halving would end at 2.4 mm
    ((2.0, 2.0, 2.0), (4, 2, 1), (2, 1, 0)),   # the demo's grid: unchanged
    ((4.0, 4.0, 4.0), (4, 2, 1), (2, 1, 0)),
])
def test_the_pyramid_ends_at_2mm_or_the_voxel_whichever_is_coarser(spacing, shrink, sigmas):
    assert reg.pyramid(spacing) == (shrink, sigmas)
    assert reg.method_record()["finest_level_mm"] == 2.0
