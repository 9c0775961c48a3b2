"""Brain masks from the CE-T1 (or the T1) against the phantom's ground truth (real images, real
methods)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to, resample_to_output
from scipy import ndimage

import cesynth
from cesynth import brainmask as bm
from cesynth.io import InputError, load_nifti, read_tsv, save_nifti

DICE_REQUIRED = 0.95       # the requirement for the default method
DICE_THICK_REQUIRED = 0.90  # 5 mm axial slices
THICK_ZOOMS = (2.0, 2.0, 5.0)

needs_deepbet = pytest.mark.skipif("deepbet" not in bm.available_methods(),
                                   reason="deepbet is not installed")
needs_bet_python = pytest.mark.skipif("bet-python" not in bm.available_methods(),
                                      reason="brainextractor is not installed")


# ---------------------------------------------------------------------------------------------
# Fixtures: a two-subject phantom (one with a tumor) at 2 mm, built once per module


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cesynth import phantom

    out = tmp_path_factory.mktemp("phantom")
    phantom.make_cohort(out, 2, seed=0, n_set_b=1,
                        settings=phantom.PhantomSettings(voxel_mm=2.0))
    return out


def _subjects(cohort: Path) -> list[str]:
    return sorted(p.name for p in cohort.glob("sub-*") if p.is_dir())


def _ce_t1_path(cohort: Path, sub: str) -> Path:
    return cohort / sub / "anat" / f"{sub}_ce-gadolinium_T1w.nii.gz"


def _truth(cohort: Path, sub: str) -> nib.Nifti1Image:
    return nib.load(cohort / "derivatives" / "phantom" / sub
                    / f"{sub}_space-ceT1w_desc-brain_mask.nii.gz")


def _has_tumor(cohort: Path, sub: str) -> bool:
    return any((cohort / "derivatives" / "tumor_masks" / sub).rglob("*_mask.nii*"))


@pytest.fixture(scope="module")
def tumor_subject(cohort: Path) -> str:
    with_tumor = [sub for sub in _subjects(cohort) if _has_tumor(cohort, sub)]
    return (with_tumor or _subjects(cohort))[0]


@pytest.fixture(scope="module")
def thick(cohort: Path, tumor_subject: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The tumor subject's CE-T1 and true mask on a 2x2x5 mm axial grid."""
    image = resample_to_output(load_nifti(_ce_t1_path(cohort, tumor_subject)),
                               voxel_sizes=THICK_ZOOMS, order=1)
    truth = resample_from_to(_truth(cohort, tumor_subject), image, order=1)
    return image, np.asarray(truth.dataobj) >= 0.5


_MASKS: dict[tuple[str, str], tuple[np.ndarray, dict]] = {}


def _mask_of(cohort: Path, sub: str, method: str) -> tuple[np.ndarray, dict]:
    """Masks are costly (seconds each): compute each (subject, method) once per module."""
    if (sub, method) not in _MASKS:
        _MASKS[(sub, method)] = bm.brain_mask(load_nifti(_ce_t1_path(cohort, sub)), method,
                                              threads=2)
    return _MASKS[(sub, method)]


def _report(label: str, value: float) -> None:
    print(f"\n{label}: Dice {value:.4f}")


# ---------------------------------------------------------------------------------------------
# Accuracy against the phantom's ground truth


@needs_deepbet
def test_deepbet_dice_on_every_phantom_subject(cohort: Path) -> None:
    assert any(_has_tumor(cohort, sub) for sub in _subjects(cohort)), "no tumor subject"
    for sub in _subjects(cohort):
        mask, info = _mask_of(cohort, sub, "deepbet")
        score = bm.dice(mask, np.asarray(_truth(cohort, sub).dataobj))
        _report(f"deepbet {sub} ({info['seconds']} s)", score)
        assert score >= DICE_REQUIRED, f"{sub}: Dice {score:.4f}"


@needs_bet_python
def test_bet_python_dice_on_tumor_subject(cohort: Path, tumor_subject: str) -> None:
    mask, info = _mask_of(cohort, tumor_subject, "bet-python")
    score = bm.dice(mask, np.asarray(_truth(cohort, tumor_subject).dataobj))
    _report(f"bet-python {tumor_subject} ({info['seconds']} s)", score)
    assert score >= DICE_REQUIRED


@pytest.mark.parametrize("method", [
    pytest.param("deepbet", marks=needs_deepbet),
    pytest.param("bet-python", marks=needs_bet_python),
])
def test_thick_axial_slices(thick: tuple[nib.Nifti1Image, np.ndarray], method: str) -> None:
    image, truth = thick
    assert image.header.get_zooms()[:3] == pytest.approx(THICK_ZOOMS)
    mask, _ = bm.brain_mask(image, method, threads=2)
    score = bm.dice(mask, truth)
    _report(f"{method} thick {THICK_ZOOMS}", score)
    assert mask.shape == image.shape
    assert score >= DICE_THICK_REQUIRED


# ---------------------------------------------------------------------------------------------
# Shape of the output


@needs_deepbet
def test_mask_file_is_native_grid_one_component_without_holes(
        cohort: Path, tumor_subject: str, tmp_path: Path) -> None:
    image_path = _ce_t1_path(cohort, tumor_subject)
    out = tmp_path / "mask.nii.gz"
    info = bm.brain_mask_file(image_path, out, "auto", threads=2)
    image, written = nib.load(image_path), nib.load(out)
    mask = np.asarray(written.dataobj)
    assert written.get_data_dtype() == np.uint8
    assert written.shape == image.shape
    np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)
    assert set(np.unique(mask)) == {0, 1}
    assert ndimage.label(mask)[1] == 1
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask.astype(bool))
    assert info["method"] == bm.resolve_method("auto")
    assert info["volume_ml"] == pytest.approx(bm.mask_volume_ml(mask, image.affine))
    assert isinstance(info["seconds"], float)
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]  # no temporary left


@needs_deepbet
def test_a_mask_of_the_t1_records_method_and_reference_in_its_sidecar(
        cohort: Path, tumor_subject: str, tmp_path: Path) -> None:
    t1 = cohort / tumor_subject / "anat" / f"{tumor_subject}_T1w.nii.gz"
    sidecar = tmp_path / "mask.json"
    info = bm.brain_mask_file(t1, tmp_path / "mask.nii.gz", "auto", threads=2,
                              reference="T1w", sidecar_path=sidecar)
    written = json.loads(sidecar.read_text())
    assert written == {"Method": bm.resolve_method("auto"), "RequestedMethod": "auto",
                       "Reference": "T1w", "ReferenceImage": t1.name,
                       "IsotropicVoxelMM": info["voxel_mm"], "VolumeMl": info["volume_ml"],
                       "CesynthVersion": cesynth.__version__}
    # the T1 holds the same brain as the CE-T1: the volumes agree within a few per cent
    ce_info = bm.brain_mask_file(_ce_t1_path(cohort, tumor_subject), tmp_path / "ce.nii.gz",
                                 "auto", threads=2)
    assert info["volume_ml"] == pytest.approx(ce_info["volume_ml"], rel=0.05)
    with pytest.raises(ValueError, match="unknown brain-mask reference"):
        bm.brain_mask_file(t1, tmp_path / "x.nii.gz", reference="T2w")
    with pytest.raises(ValueError, match="needs the reference"):
        bm.brain_mask_file(t1, tmp_path / "x.nii.gz", sidecar_path=tmp_path / "x.json")


def test_unreadable_input_leaves_no_output(tmp_path: Path) -> None:
    bad = tmp_path / "ce.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2), np.float32), np.eye(4)), bad)
    out = tmp_path / "mask.nii.gz"
    with pytest.raises(InputError, match="ce.nii.gz: expected a 3D image"):
        bm.brain_mask_file(bad, out, "auto")
    assert not out.exists()


def test_clean_mask_keeps_largest_component_and_fills_holes() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[2:12, 2:12, 2:12] = True
    mask[6, 6, 6] = False           # an inner hole
    mask[15:17, 15:17, 15:17] = True  # a stray blob
    cleaned = bm.clean_mask(mask)
    expected = np.zeros_like(mask)
    expected[2:12, 2:12, 2:12] = True
    assert np.array_equal(cleaned, expected)


def test_auto_picks_first_available_and_deepbet_without_fsl(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert bm.resolve_method("auto") == bm.available_methods()[0]
    monkeypatch.delenv("FSLDIR", raising=False)
    if "deepbet" in bm.available_methods():
        assert bm.resolve_method("auto") == "deepbet"


def test_fsl_without_fsl_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FSLDIR", raising=False)
    assert "fsl" not in bm.available_methods()
    with pytest.raises(InputError) as err:
        bm.resolve_method("fsl")
    message = str(err.value)
    assert "\n" not in message
    assert "method 'fsl'" in message and "install FSL" in message
    assert isinstance(err.value, ValueError)


def test_unknown_method_names_the_choices() -> None:
    with pytest.raises(ValueError, match="method 'watershed'.*auto, fsl, deepbet, bet-python"):
        bm.resolve_method("watershed")


@pytest.mark.skipif("fsl" not in bm.available_methods(),
                    reason="FSL is not installed (FSLDIR unset or `bet` not runnable)")
def test_fsl_bet_dice(cohort: Path, tumor_subject: str) -> None:
    mask, _ = _mask_of(cohort, tumor_subject, "fsl")
    score = bm.dice(mask, np.asarray(_truth(cohort, tumor_subject).dataobj))
    _report(f"fsl {tumor_subject}", score)
    assert score >= DICE_REQUIRED


# ---------------------------------------------------------------------------------------------
# Metrics


def test_dice_hand_values() -> None:
    a = np.array([1, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 0], bool)
    assert bm.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert bm.dice(a, a) == 1.0
    assert bm.dice(a, ~a) == 0.0
    assert bm.dice(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError):
        bm.dice(np.zeros(3), np.zeros(4))


def test_mask_volume_ml_hand_values() -> None:
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[:5, :4, :2] = 1  # 40 voxels
    affine = np.diag([2.0, -1.5, 5.0, 1.0])  # 15 mm3 per voxel, a flipped axis
    assert bm.mask_volume_ml(mask, affine) == pytest.approx(40 * 15 / 1000)
    assert bm.mask_volume_ml(mask.astype(bool), np.eye(4)) == pytest.approx(0.04)


# ---------------------------------------------------------------------------------------------
# QC row


def _skull_stripped(tmp_path: Path, radii: tuple[int, int, int]) -> tuple[Path, Path]:
    """A skull-stripped image (an ellipsoid on zero, 4 mm voxels) and its true brain mask."""
    grid = np.indices((40, 40, 40), dtype=float)
    brain = sum(((g - 20) / r) ** 2 for g, r in zip(grid, radii, strict=True)) <= 1
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    image = save_nifti(brain * (500.0 + grid[0]), affine, tmp_path / "ce.nii.gz")
    truth = save_nifti(brain, affine, tmp_path / "truth.nii.gz", dtype=np.uint8)
    return image, truth


def _row(qc_tsv: Path) -> dict[str, str]:
    [row] = read_tsv(qc_tsv).to_dict("records")
    return row


def test_qc_row_of_a_declared_mask_with_its_truth_flags_a_small_brain(tmp_path: Path) -> None:
    image, truth = _skull_stripped(tmp_path, radii=(8, 9, 7))
    info = bm.declared_brain_mask_file(image, tmp_path / "mask.nii.gz", reference="ceT1w")
    qc_tsv = tmp_path / "qc" / "brainmask" / "07.tsv"

    metrics = bm.write_qc_row(info, "07", qc_tsv, true_mask_path=truth)

    row = _row(qc_tsv)
    assert list(row) == ["scan_id", "stage", "method", "reference", "volume_ml", "seconds",
                         "source", "truth_dice", "brain_volume_implausible", "flagged"]
    assert row == {"scan_id": "07", "stage": "brainmask",
                   **{key: str(value) for key, value in metrics.items()}, "flagged": "True"}
    assert (row["method"], row["reference"]) == ("nonzero", "ceT1w")
    assert row["source"] == "nonzero region of ce.nii.gz (declared skull-stripped)"
    assert float(row["volume_ml"]) == pytest.approx(info["volume_ml"]) and info["volume_ml"] < 800
    assert float(row["truth_dice"]) == pytest.approx(1.0)
    assert row["brain_volume_implausible"] == "True"


def test_qc_row_of_a_plausible_mask_without_truth(tmp_path: Path) -> None:
    image, _ = _skull_stripped(tmp_path, radii=(15, 17, 13))
    info = bm.brain_mask_file(image, tmp_path / "mask.nii.gz", "nonzero", reference="T1w")
    qc_tsv = tmp_path / "07.tsv"

    metrics = bm.write_qc_row(info, "07", qc_tsv)

    assert metrics["brain_volume_implausible"] is False
    assert _row(qc_tsv) == {
        "scan_id": "07", "stage": "brainmask", "method": "nonzero", "reference": "T1w",
        "volume_ml": str(info["volume_ml"]), "seconds": str(info["seconds"]),
        "brain_volume_implausible": "False", "flagged": "False",
    }
