"""Registration onto the CE-T1: accuracy against known transforms, conventions, determinism, errors.

Every test runs real ANTs registrations on real NIfTI files written to a temporary folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import affine_transform
from scipy.spatial.transform import Rotation

from cesynth import registration as reg
from cesynth.io import InputError, save_nifti

THREADS = 2
VOXEL_MM = 3.0
MAX_MEAN_ERROR_MM = 1.0


@dataclass(frozen=True)
class Subject:
    """Paths of one synthetic subject and the true CE-T1 -> modality world mappings (RAS)."""

    ce_t1: Path
    t1w: Path
    t2w: Path
    dwi: Path
    bval: Path
    adc: Path
    brain_mask: Path  # on the CE-T1 grid
    true_adc_median: float  # mm2/s, over the brain
    truth: dict[str, np.ndarray]


def _rigid(angles_deg: tuple[float, float, float], shift_mm: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    matrix[:3, 3] = shift_mm
    return matrix


def _grid(template: nib.Nifti1Image, voxel: tuple[float, float, float],
          shift_mm: tuple[float, float, float]) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid covering the template's field of view with the given voxel size."""
    extent = np.array(template.shape) * np.abs(np.diag(template.affine)[:3])
    shape = tuple(int(n) for n in np.ceil(extent / np.array(voxel)))
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = template.affine[:3, 3] + np.array(shift_mm)
    return shape, affine


def _sample(volume: np.ndarray, volume_affine: np.ndarray, shape: tuple[int, ...],
            affine: np.ndarray, fixed_to_moving: np.ndarray) -> np.ndarray:
    """Image on (shape, affine) of an object whose CE-T1-world content is ``volume``."""
    voxel_map = np.linalg.inv(volume_affine) @ np.linalg.inv(fixed_to_moving) @ affine
    return affine_transform(volume, voxel_map, output_shape=shape, order=1)


def _mni_subject(root: Path) -> Subject:
    """Fallback fixture: the MNI template in a CE-T1 frame, each modality rigidly misplaced.

    T1w on a 3 mm grid, T2w and DWI on thick-slice grids (6 mm) with inverted, T2-like contrast;
    the DWI holds two b=0 volumes and b=500, 1000 with a known ADC.
    """
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    t1 = template.get_fdata(dtype=np.float32)
    t1 /= np.percentile(t1[t1 > 0], 99)
    brain = t1 > 0.15
    adc_true = np.where(brain, 3.0e-3 - 2.3e-3 * np.clip(t1, 0, 1), 0.0).astype(np.float32)
    t2_like = np.where(brain, 1.3 - np.clip(t1, 0, 1), 0.0).astype(np.float32)
    rng = np.random.default_rng(0)
    identity = np.eye(4)

    ce_shape, ce_affine = _grid(template, (VOXEL_MM,) * 3, (0.0, 0.0, 0.0))
    ce = _sample(t1, template.affine, ce_shape, ce_affine, identity)
    save_nifti(ce, ce_affine, root / "ceT1w.nii.gz")
    mask = _sample(brain.astype(np.float32), template.affine, ce_shape, ce_affine, identity) > 0.5
    save_nifti(mask, ce_affine, root / "brain_mask.nii.gz", dtype=np.uint8)
    adc_on_ce = _sample(adc_true, template.affine, ce_shape, ce_affine, identity)

    truth = {"T1w": _rigid((5, -3, 7), (6, -5, 4)),
             "T2w": _rigid((-6, 4, -5), (-5, 7, -3)),
             "dwi": _rigid((4, 6, -4), (4, 5, -6))}
    shape, affine = _grid(template, (VOXEL_MM,) * 3, (3, -4, 2))
    t1w = _sample(t1, template.affine, shape, affine, truth["T1w"])
    save_nifti(t1w + rng.normal(0, 0.02, shape), affine, root / "T1w.nii.gz")
    shape, affine = _grid(template, (VOXEL_MM, VOXEL_MM, 6.0), (-2, 3, -4))
    save_nifti(_sample(t2_like, template.affine, shape, affine, truth["T2w"]), affine,
               root / "T2w.nii.gz")
    shape, affine = _grid(template, (3.5, 3.5, 6.0), (2, 2, 3))
    s0 = _sample(t2_like, template.affine, shape, affine, truth["dwi"])
    adc = _sample(adc_true, template.affine, shape, affine, truth["dwi"])
    bvals = [0, 500, 1000, 0]
    dwi = np.stack([s0 * np.exp(-b * adc) for b in bvals], axis=3)
    save_nifti(dwi + rng.normal(0, 0.01, dwi.shape), affine, root / "dwi.nii.gz")
    (root / "dwi.bval").write_text(" ".join(str(b) for b in bvals) + "\n")
    save_nifti(adc, affine, root / "adc.nii.gz")
    return Subject(root / "ceT1w.nii.gz", root / "T1w.nii.gz", root / "T2w.nii.gz",
                   root / "dwi.nii.gz", root / "dwi.bval", root / "adc.nii.gz",
                   root / "brain_mask.nii.gz", float(np.median(adc_on_ce[mask])), truth)


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    return _mni_subject(tmp_path_factory.mktemp("reg_subject"))


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
        subject.ce_t1, subject.dwi, subject.bval, subject.adc, out / "adc.nii.gz",
        out / "from-dwi_xfm.mat", threads=THREADS)
    return results


@pytest.mark.parametrize("modality", ["T1w", "T2w", "dwi"])
def test_displacement_below_1mm_and_mi_rises(subject: Subject, registered: dict,
                                             modality: str) -> None:
    result = registered[modality]
    error = reg.displacement_error_mm(result.transform_path, subject.truth[modality],
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
    median = float(np.median(adc.get_fdata()[mask]))
    assert median == pytest.approx(subject.true_adc_median, rel=0.05)


def test_translation_round_trip_and_ras_lps(tmp_path: Path) -> None:
    shift_ras = np.eye(4)
    shift_ras[:3, 3] = [10.0, -4.0, 6.0]
    xfm = tmp_path / "shift.mat"
    import ants

    ants.write_transform(reg.ras_to_ants_transform(shift_ras), str(xfm))
    stored = reg.read_ants_transform(xfm)
    # ANTs stores LPS: x and y translations change sign, z does not
    np.testing.assert_allclose(np.asarray(stored.parameters)[9:], [-10.0, 4.0, 6.0], atol=1e-5)
    np.testing.assert_allclose(reg.ants_transform_to_ras(stored), shift_ras, atol=1e-5)

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
    matrices = []
    for run in range(2):
        result = reg.register_to_reference(subject.ce_t1, subject.t1w, tmp_path / f"{run}.nii.gz",
                                           tmp_path / f"{run}.mat", threads=1, seed=7)
        matrices.append(reg.ants_transform_to_ras(reg.read_ants_transform(result.transform_path)))
    np.testing.assert_allclose(matrices[0], matrices[1], atol=1e-6)


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
    bval.write_text("500 500 1000 1000\n")
    with pytest.raises(InputError, match="no b=0"):
        reg.register_dwi_to_reference(subject.ce_t1, subject.dwi, bval, subject.adc,
                                      tmp_path / "adc.nii.gz", tmp_path / "x.mat")
