"""Per-image QC (cesynth.image_qc) on phantom heads degraded as real scans are: upsampled from
thick slices, clipped at the top of int16, cut by the field of view, skull-stripped; the flags in
the gathered table and in the status table."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from cesynth import image_qc, qc, status
from cesynth.io import InputError, read_tsv, save_nifti
from cesynth.normalise import saturation
from cesynth.phantom.anatomy import _stream, build_anatomy
from cesynth.phantom.physics import WM_SCANNER_SIGNAL, add_rician_noise, noise_free_image
from cesynth.phantom.settings import PhantomSettings

VOXEL_MM = 2.0
INT16_MAX = np.iinfo(np.int16).max


@pytest.fixture(scope="module")
def head():
    """A native 3D phantom head at 2 mm: T1w, CE-T1 and T2w with Rician noise, and its brain."""
    settings = PhantomSettings(voxel_mm=VOXEL_MM)
    anatomy = build_anatomy(5, "rim", settings)
    brain = anatomy.indicators["brain"] > 0.5
    rng = _stream(5, "noise")
    maps = {name: volume.astype(np.float64) for name, volume in anatomy.maps.items()}
    images = {modality: add_rician_noise(noise_free_image(modality, maps),
                                         WM_SCANNER_SIGNAL / settings.snr, rng)
              for modality in ("T1w", "ceT1w", "T2w")}
    return images, brain, anatomy.grid.affine


def thick_slices(volume: np.ndarray, axis: int, factor: int, order: int) -> np.ndarray:
    """``volume`` as if acquired in slices ``factor`` times thicker along ``axis`` (each the mean
    of ``factor`` thin ones) and upsampled back: nearest neighbour (order 0) or linear (1)."""
    moved = np.moveaxis(volume, axis, 0)
    n_thick = moved.shape[0] // factor
    thick = moved[:n_thick * factor].reshape(n_thick, factor, *moved.shape[1:]).mean(axis=1)
    # the centre of thin slice k, in units of thick slices
    position = np.clip((np.arange(moved.shape[0]) + 0.5) / factor - 0.5, 0, n_thick - 1)
    if order == 0:
        upsampled = thick[np.rint(position).astype(int)]
    else:
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, n_thick - 1)
        weight = (position - low).reshape(-1, 1, 1)
        upsampled = (1 - weight) * thick[low] + weight * thick[high]
    return np.moveaxis(upsampled, 0, axis)


# ------------------------------------------------------------------ resampling stripes


@pytest.mark.parametrize("modality", ["T1w", "ceT1w", "T2w"])
def test_a_native_3d_volume_has_fresh_detail_between_slices_along_every_axis(head, modality):
    images, brain, _ = head
    for axis in range(3):
        assert image_qc.slice_hf_ratio(images[modality], brain, axis) > 0.5


@pytest.mark.parametrize("order", [0, 1], ids=["nearest", "linear"])
@pytest.mark.parametrize("axis", [2, 0], ids=["z", "x"])
def test_a_volume_upsampled_from_6_mm_slices_is_flagged_along_its_slice_axis(head, axis, order):
    images, brain, _ = head
    upsampled = thick_slices(images["T1w"], axis, factor=3, order=order)  # 6 mm from 2 mm
    value, named = image_qc.stripe_statistic(upsampled, brain)
    assert value < 0.05 and named == image_qc.AXES[axis]
    native, _ = image_qc.stripe_statistic(images["T1w"], brain)
    limit = image_qc.Thresholds().min_slice_hf_ratio
    assert value < limit < native


def test_upsampled_by_two_is_flagged_and_too_few_slices_give_nan(head):
    images, brain, _ = head
    upsampled = thick_slices(images["T2w"], 2, factor=2, order=1)
    assert image_qc.slice_hf_ratio(upsampled, brain, 2) < image_qc.Thresholds().min_slice_hf_ratio
    thin = np.zeros(brain.shape, bool)
    thin[:, :, 40:45] = brain[:, :, 40:45]  # 5 slices of brain
    assert math.isnan(image_qc.slice_hf_ratio(images["T2w"], thin, 2))


# ------------------------------------------------------------------ saturation


def test_saturation_is_the_share_of_brain_voxels_at_the_image_maximum(head):
    images, brain, _ = head
    ce = images["ceT1w"]
    limit = image_qc.Thresholds().max_saturated_share
    found = saturation(ce, brain)
    assert found.level == ce.max() and found.voxels <= 1  # continuous: one voxel at most
    assert not found.found(limit)
    clip = np.percentile(ce[brain], 99.9)
    found = saturation(np.minimum(ce, clip), brain)
    assert found.level == clip and found.share == pytest.approx(1e-3, rel=0.05)
    assert found.voxels == round(found.share * brain.sum()) and found.found(limit)
    # a lone brightest voxel is no plateau, even in a brain so small that it is 1 % of it
    tiny = np.zeros(brain.shape, bool)
    tiny[40:45, 40:45, 40:44] = True
    lone = np.where(tiny, 1.0, 0.0)
    lone[42, 42, 42] = 2.0
    assert saturation(lone, tiny).share == 0.01 and not saturation(lone, tiny).found(limit)


# ------------------------------------------------------------------ one image's row, the table


def _as_int16(volume: np.ndarray, brain: np.ndarray, clip_at_share: float | None = None
              ) -> np.ndarray:
    """Scaled into int16 as a release stores it; with ``clip_at_share``, the brightest share of
    the brain saturates at 32767 (as one BraTS CE-T1 does)."""
    top = np.percentile(volume[brain], 100 * (1 - clip_at_share)) if clip_at_share else (
        volume.max())
    return np.clip(np.rint(volume * (INT16_MAX / top)), 0, INT16_MAX).astype(np.int16)


@pytest.fixture(scope="module")
def cohort(head, tmp_path_factory):
    """One scan as a skull-stripped release would ship it: the CE-T1 saturated, the T2w upsampled
    from 6 mm slices, the T1w native but cut at the top of the brain, a 6 mm-slice ADC; each
    measured, and the rows gathered and flagged with the default thresholds, declared
    skull-stripped."""
    images, brain, affine = head
    root = tmp_path_factory.mktemp("image_qc")
    mask = save_nifti(brain.astype(np.uint8), affine, root / "mask.nii.gz", dtype=np.uint8)
    cut = brain & (np.arange(brain.shape[2]) < np.flatnonzero(brain.any((0, 1)))[-1] - 12)
    stripped = {
        "ceT1w": _as_int16(images["ceT1w"], brain, clip_at_share=2e-3) * brain,
        "T2w": _as_int16(thick_slices(images["T2w"], 2, 3, 1), brain) * brain,
        "T1w": _as_int16(images["T1w"], brain) * cut,
    }
    rows = []
    for modality, data in stripped.items():
        path = save_nifti(data, affine, root / f"{modality}.nii.gz", dtype=np.int16)
        metrics = image_qc.measure_image(path, path, mask)
        rows.append(qc.stage_row_path(root / "qc", "images", f"01_{modality}"))
        image_qc.write_qc_row(metrics, modality, "01", rows[-1])
    thick = np.diag([VOXEL_MM, VOXEL_MM, 3 * VOXEL_MM, 1.0])
    adc_stored = save_nifti(np.full((8, 8, 8), 8e-4, np.float32), thick, root / "adc_dwi.nii.gz")
    adc = save_nifti((images["T2w"] * 1e-6 * brain).astype(np.float32), affine,
                     root / "adc.nii.gz")
    image_qc.write_qc_row(image_qc.measure_image(adc_stored, adc, mask), "adc", "01",
                          root / "qc" / "images" / "01_adc.tsv")
    rows.append(root / "qc" / "images" / "01_adc.tsv")
    table = qc.gather_tables(rows, root / "qc" / "images.tsv",
                             flag=image_qc.flagger({}, skull_stripped=True))
    return root, table.set_index("modality")


def test_each_measurement_is_in_the_row(cohort):
    _, table = cohort
    ce = table.loc["ceT1w"]
    assert ce["stored_dtype"] == "int16" and float(ce["stored_max"]) == INT16_MAX
    assert float(ce["saturation_level"]) == INT16_MAX
    assert float(ce["saturated_share"]) == pytest.approx(2e-3, rel=0.1)
    assert ce["stored_voxel_mm"] == "2.00x2.00x2.00" and float(ce["stored_slice_mm"]) == 2.0
    assert float(ce["background_zero_share"]) == 1.0 and float(ce["brain_coverage"]) == 1.0
    assert int(ce["brain_levels"]) > 1000
    assert table.loc["T2w", "slice_hf_axis"] == "z"
    assert float(table.loc["T1w", "brain_coverage"]) < 0.95
    assert float(table.loc["adc", "stored_slice_mm"]) == 3 * VOXEL_MM


def test_the_gathered_table_flags_what_each_image_brings(cohort):
    root, table = cohort
    flags = {modality: {name for name in image_qc.FLAGS if str(table.loc[modality, name]) == "True"}
             for modality in table.index}
    assert flags == {"ceT1w": {"saturated"}, "T2w": {"resampled_slices"},
                     "T1w": {"low_brain_coverage"}, "adc": {"thick_slices"}}
    assert set(table["flagged"].astype(str)) == {"True"}
    assert read_tsv(root / "qc" / "images.tsv").shape == table.reset_index().shape


def test_a_zero_background_not_declared_skull_stripped_is_flagged(cohort):
    _, table = cohort
    rows = table.reset_index()
    undeclared = image_qc.flag_table(rows, image_qc.Thresholds(), skull_stripped=False)
    anatomical = undeclared["modality"] != "adc"  # a fitted map is noise outside the head
    assert undeclared.loc[anatomical, "background_undeclared"].all()
    assert not undeclared.loc[~anatomical, "background_undeclared"].any()


def test_thresholds_come_from_config_and_a_looser_one_clears_its_flag(cohort):
    _, table = cohort
    rows = table.reset_index()
    loose = image_qc.Thresholds.from_config({"max_saturated_share": 0.01, "unknown": 1})
    assert loose.max_saturated_share == 0.01 and loose.max_slice_mm == 3.0
    flagged = image_qc.flag_table(rows, loose, skull_stripped=True).set_index("modality")
    assert str(flagged.loc["ceT1w", "saturated"]) == "False"
    assert str(flagged.loc["ceT1w", "flagged"]) == "False"


def test_the_status_table_shows_each_stages_qc_flags(cohort, tmp_path):
    root, _ = cohort
    results = tmp_path / "results"
    (results / "qc").mkdir(parents=True)
    (results / "qc" / "images.tsv").write_bytes((root / "qc" / "images.tsv").read_bytes())
    scan = status.ScanInfo("01", "01", None, "A", "train", ("T1w", "ceT1w", "T2w"))
    table = status.status_table(results, [scan], models=[]).set_index("stage")
    assert table.loc["image_qc", "qc_flags"] == (
        "ceT1w: saturated; T2w: resampled_slices; T1w: low_brain_coverage; adc: thick_slices")
    assert table["qc_flags"].drop("image_qc").isna().all()
    report = status.format_report(table.reset_index())
    assert "QC flags (1):\nsub-01\timage_qc\tceT1w: saturated;" in report


def test_a_mask_off_the_images_grid_is_one_line(cohort, tmp_path):
    root, _ = cohort
    img = nib.load(root / "mask.nii.gz")
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    shifted = save_nifti(np.asanyarray(img.dataobj), affine, tmp_path / "mask.nii.gz",
                         dtype=np.uint8)
    with pytest.raises(InputError, match="CE-T1 brain mask"):
        image_qc.measure_image(root / "T1w.nii.gz", root / "T1w.nii.gz", shifted)
