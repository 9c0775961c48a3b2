"""Tests for QC figures, tables and plausibility flags (cesynth.qc)."""

from __future__ import annotations

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from cesynth.io import InputError, read_tsv, save_nifti
from cesynth.qc import (
    ADC_MEDIAN_LIMITS_MM2_S,
    BRAIN_VOLUME_LIMITS_ML,
    brain_volume_ml,
    count_flagged,
    gather_tables,
    montage_png,
    plausibility_flags,
    qc_row,
    stage_row_path,
    stage_table_path,
    write_row,
)

SHAPE = (36, 44, 30)
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])


@pytest.fixture
def scans(tmp_path):
    """A CE-T1, two registered modalities and a brain mask on one grid."""
    grid = np.indices(SHAPE, dtype=float)
    centre = np.asarray(SHAPE)[:, None, None, None] / 2
    radius = np.sqrt((((grid - centre) / (np.asarray(SHAPE)[:, None, None, None] / 3)) ** 2)
                     .sum(axis=0))
    mask = (radius <= 1).astype(np.uint8)
    rng = np.random.default_rng(1)
    paths = {}
    for name, scale in (("ce", 1000.0), ("t1", 800.0), ("t2", 400.0)):
        data = scale * (1.5 - radius).clip(0) + rng.normal(0, 10, SHAPE)
        paths[name] = save_nifti(data, AFFINE, tmp_path / f"{name}.nii.gz")
    paths["mask"] = save_nifti(mask, AFFINE, tmp_path / "mask.nii.gz", dtype=np.uint8)
    return paths


def test_montage_png_is_a_valid_non_trivial_image(scans, tmp_path):
    out = tmp_path / "qc" / "sub-01_montage.png"
    result = montage_png(scans["ce"], {"T1w": scans["t1"], "T2w": scans["t2"]}, scans["mask"],
                         out, title="registration QC")
    assert result == out and out.is_file()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not blank
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert red.sum() > 50  # the mask outline is drawn
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


def test_montage_png_rejects_off_grid_image_and_leaves_nothing(scans, tmp_path):
    other = save_nifti(np.ones((10, 10, 10)), AFFINE, tmp_path / "small.nii.gz")
    out = tmp_path / "bad.png"
    with pytest.raises(InputError, match="CE-T1 grid"):
        montage_png(scans["ce"], {"T1w": other}, scans["mask"], out)
    assert not out.exists()


def test_qc_row_and_gather_tables_sorted_by_scan_id(tmp_path):
    qc_dir = tmp_path / "qc"
    rows = [
        qc_row("brainmask", "sub-03", {"volume_ml": 1200.5}, {"brain_volume_implausible": False}),
        qc_row("brainmask", "sub-01", {"volume_ml": 450.0}, {"brain_volume_implausible": True}),
        qc_row("brainmask", "sub-02", {"volume_ml": 1500.0, "note": "ok"}, {}),
    ]
    paths = [write_row(row, stage_row_path(qc_dir, "brainmask", row["scan_id"])) for row in rows]
    assert paths[0] == qc_dir / "brainmask" / "sub-03.tsv"
    assert len(read_tsv(paths[0])) == 1

    table = gather_tables(paths, stage_table_path(qc_dir, "brainmask"))
    on_disk = read_tsv(qc_dir / "brainmask.tsv")
    assert list(on_disk["scan_id"]) == ["sub-01", "sub-02", "sub-03"]
    assert list(on_disk["flagged"]) == ["True", "False", "False"]
    assert list(on_disk.columns[:2]) == ["scan_id", "stage"]
    assert on_disk["note"].isna().sum() == 2  # union of columns, n/a where absent
    assert float(on_disk.loc[2, "volume_ml"]) == 1200.5
    assert len(table) == 3
    assert count_flagged(table) == 1


def test_gather_tables_empty_and_missing_input(tmp_path):
    """A stage no scan needs (no diffusion in the cohort) gives a header-only table."""
    empty = gather_tables([], tmp_path / "empty.tsv")
    assert empty.empty and (tmp_path / "empty.tsv").is_file()
    assert count_flagged(empty) == 0
    with pytest.raises(InputError, match="not found"):
        gather_tables([tmp_path / "nope.tsv"], tmp_path / "out.tsv")


def test_qc_row_rejects_clashing_names():
    with pytest.raises(ValueError, match="duplicate"):
        qc_row("adc", "sub-01", {"scan_id": 1}, {})


def test_plausibility_flags_trigger_outside_limits():
    low_v, high_v = BRAIN_VOLUME_LIMITS_ML
    low_a, high_a = ADC_MEDIAN_LIMITS_MM2_S
    assert (low_v, high_v) == (800.0, 2000.0) and (low_a, high_a) == (0.6e-3, 1.2e-3)
    assert plausibility_flags() == {}
    for volume, flagged in ((low_v, False), (high_v, False), (1400.0, False),
                            (low_v - 1, True), (high_v + 1, True), (float("nan"), True)):
        assert plausibility_flags(brain_volume_ml=volume) == {"brain_volume_implausible": flagged}
    for adc, flagged in ((low_a, False), (high_a, False), (0.8e-3, False),
                         (0.59e-3, True), (1.21e-3, True), (3.0e-3, True)):
        assert plausibility_flags(adc_median_mm2_s=adc) == {"adc_median_implausible": flagged}
    both = plausibility_flags(1000.0, 2e-3, volume_limits_ml=(1100.0, 1200.0))
    assert both == {"brain_volume_implausible": True, "adc_median_implausible": True}


def test_brain_volume_ml():
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[:4, :5, :2] = 1  # 40 voxels of 10 mm3
    img = nib.Nifti1Image(mask, np.diag([2.0, -1.0, 5.0, 1.0]))
    assert brain_volume_ml(img) == pytest.approx(0.4)
