"""Tests of the ADC fit (cesynth.adc), given maps (adc_maps) and the QC row (adc_qc)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cesynth.adc import (
    AdcStats,
    fit_adc,
    fit_adc_file,
    fit_dwi_shells,
    group_shells,
    read_bvals_bvecs,
    shell_means,
)
from cesynth.adc_maps import convert_adc_map_file
from cesynth.adc_qc import adc_error_vs_truth, shells_used, write_qc_row
from cesynth.io import InputError, read_tsv

SHAPE = (12, 10, 6)
AFFINE = np.array([[-1.5, 0, 0, 40], [0, 1.5, 0, -30], [0, 0, 3, -12], [0, 0, 0, 1]])
# 1 b0 + 3 orthogonal directions x 2 shells
BVALS = np.array([0, 500, 500, 500, 1000, 1000, 1000], dtype=float)
BVECS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
                 dtype=float).T


def three_tissue_adc(shape=SHAPE) -> np.ndarray:
    """WM / GM / CSF-like ADC map (mm2/s)."""
    adc = np.full(shape, 0.75e-3, dtype=np.float32)
    adc[: shape[0] // 3] = 0.85e-3
    adc[2 * shape[0] // 3:] = 3.0e-3
    return adc


def simulate(adc: np.ndarray, s0: float | np.ndarray = 1000.0, bvals=BVALS) -> np.ndarray:
    """Noise-free isotropic DWI, shape adc.shape + (len(bvals),)."""
    s0 = np.broadcast_to(np.asarray(s0, dtype=np.float64), adc.shape)
    return np.stack([s0 * np.exp(-b * adc.astype(np.float64)) for b in bvals], axis=-1)


def write_dataset(folder: Path, dwi: np.ndarray, bvals=BVALS, bvecs=BVECS) -> tuple[Path, ...]:
    dwi_path, bval_path, bvec_path = (folder / f"dwi.{ext}" for ext in ("nii.gz", "bval", "bvec"))
    nib.save(nib.Nifti1Image(dwi.astype(np.float32), AFFINE), dwi_path)
    np.savetxt(bval_path, np.atleast_2d(bvals), fmt="%g")
    np.savetxt(bvec_path, bvecs, fmt="%.6f")
    return dwi_path, bval_path, bvec_path


def test_noise_free_recovery_exact():
    true = three_tissue_adc()
    shell_b, signal = shell_means(simulate(true), BVALS)
    np.testing.assert_allclose(shell_b, [0, 500, 1000])
    adc, stats = fit_adc(shell_b, signal)
    assert adc.dtype == np.float32 and adc.shape == SHAPE
    np.testing.assert_allclose(adc, true, rtol=1e-5)
    assert stats.n_voxels_fitted == adc.size
    assert stats.n_clipped_low == stats.n_clipped_high == stats.n_nonpositive_signal == 0
    assert stats.median_in_mask == pytest.approx(np.median(true), rel=1e-5)
    assert stats.b_values == (0.0, 500.0, 1000.0)


def test_shells_grouped_within_tolerance_and_b0_averaged():
    bvals = np.array([5, 0, 990, 510, 1010, 495], dtype=float)
    true = three_tissue_adc()
    dwi = simulate(true, bvals=bvals)
    dwi[..., 1] *= 4.0  # second b0 four times brighter: geometric b0 mean is 2 * S0
    shell_b, signal = shell_means(dwi, bvals, tolerance=50)
    np.testing.assert_allclose(shell_b, [2.5, 502.5, 1000])
    s0_expected = 2.0 * 1000.0 * np.exp(-5 / 2 * true)
    np.testing.assert_allclose(signal[..., 0], s0_expected, rtol=1e-5)
    np.testing.assert_allclose(shell_means(dwi, bvals, tolerance=10)[0], [2.5, 495, 510, 990, 1010])


def test_geometric_mean_of_anisotropic_directions_is_trace_adc():
    directional = np.array([0.5e-3, 0.8e-3, 1.1e-3])
    dwi = np.empty(SHAPE + (7,))
    dwi[..., 0] = 800.0
    for shell, b in enumerate((500.0, 1000.0)):
        for axis in range(3):
            dwi[..., 1 + 3 * shell + axis] = 800.0 * np.exp(-b * directional[axis])
    adc, _ = fit_adc(*shell_means(dwi, BVALS))
    np.testing.assert_allclose(adc, 0.8e-3, rtol=1e-5)


def test_zeros_negatives_nan_give_finite_output_and_counted_clips(tmp_path):
    true = np.full(SHAPE, 0.8e-3, dtype=np.float32)
    dwi = simulate(true)
    dwi[0, 0, 0, 4] = 0.0  # b=1000 sample zero: huge ADC -> clipped high
    dwi[1, 0, 0, 5] = -3.0  # negative b=1000 sample -> clipped high
    dwi[2, 0, 0, 2] = np.nan  # NaN b=500 sample: counted; the middle of 3 equally spaced
    # shells has zero weight in the slope, so the ADC is still right
    dwi[3, 0, 0, 6] = np.inf  # infinite sample: treated as invalid too -> clipped high
    dwi[4, 0, 0, 1:] = 2000.0  # signal rises with b: negative ADC -> clipped low
    dwi[5, 0, 0, :] = 0.0  # all zero: below noise threshold, not fitted
    dwi[6, 0, 0, 0] = -5.0  # negative S0: not fitted
    dwi[7, 0, 0, :] = 1e-3  # noise-floor voxel: below the automatic threshold
    dwi[8, 0, 0, 0] = np.nan  # invalid S0: not fitted
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, dwi)
    # a file with NaN or inf voxels is refused (issue 26); the arrays' fit copes with them
    with pytest.raises(InputError, match="3 non-finite voxels"):
        fit_adc_file(dwi_path, bval_path, bvec_path, tmp_path / "adc.nii")
    assert not (tmp_path / "adc.nii").exists()

    adc, stats = fit_adc(*shell_means(dwi, BVALS))
    assert np.all(np.isfinite(adc))
    np.testing.assert_array_equal(adc[[0, 1, 3], 0, 0], np.float32(4e-3))
    assert adc[2, 0, 0] == pytest.approx(0.8e-3, rel=1e-5)
    assert adc[4, 0, 0] == 0.0
    np.testing.assert_array_equal(adc[5:9, 0, 0], 0.0)
    assert stats.n_clipped_high == 3
    assert stats.n_clipped_low == 1
    assert stats.n_nonpositive_signal == 4  # voxels 0-3 (5, 6 and 8 are not fitted)
    assert stats.n_voxels_fitted == adc.size - 4
    rest = np.ones(SHAPE, dtype=bool)
    rest[:9, 0, 0] = False
    rest[2, 0, 0] = True
    np.testing.assert_allclose(adc[rest], 0.8e-3, rtol=1e-5)


def test_clip_limits_are_parameters_and_mask_zeroes_outside():
    true = three_tissue_adc()
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:-2, 2:-2, 1:-1] = True
    adc, stats = fit_adc(*shell_means(simulate(true), BVALS), mask, min_adc=0.8e-3,
                         max_adc=2e-3)
    assert np.all(adc[~mask] == 0)
    inside = true[mask]
    assert stats.n_voxels_fitted == mask.sum()
    assert stats.n_clipped_low == np.count_nonzero(inside < 0.8e-3)
    assert stats.n_clipped_high == np.count_nonzero(inside > 2e-3)
    np.testing.assert_allclose(adc[mask], np.clip(inside, 0.8e-3, 2e-3), rtol=1e-5)


def test_file_round_trip(tmp_path):
    true = three_tissue_adc()
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, simulate(true))
    out = tmp_path / "out" / "adc.nii.gz"
    stats = fit_adc_file(dwi_path, bval_path, bvec_path, out)
    assert isinstance(stats, AdcStats)
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    assert bytes(img.header["intent_name"]).rstrip(b"\0") == b"ADC mm2/s"
    assert img.shape == SHAPE
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(img.get_fdata(), true, rtol=1e-5)
    assert [p.name for p in out.parent.iterdir()] == ["adc.nii.gz"]  # no temporary left

    true_path = tmp_path / "true.nii.gz"
    nib.save(nib.Nifti1Image(true, AFFINE), true_path)
    errors = adc_error_vs_truth(out, true_path)
    assert errors["median_abs_error"] < 1e-8 and errors["median_rel_error"] < 1e-5
    assert errors["n_voxels"] == true.size


def test_file_with_mask_and_extra_shell(tmp_path):
    bvals = np.append(BVALS, 2000.0)
    bvecs = np.hstack([BVECS, [[1], [0], [0]]])
    true = three_tissue_adc()
    dwi = simulate(true, bvals=bvals)
    dwi[..., -1] = 1.0  # a b=2000 shell must not enter the fit
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, dwi, bvals, bvecs)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[3:9] = 1
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, AFFINE), mask_path)
    out = tmp_path / "adc.nii.gz"
    stats = fit_adc_file(dwi_path, bval_path, bvec_path, out, mask_path=mask_path)
    adc = nib.load(out).get_fdata()
    assert stats.b_values == (0.0, 500.0, 1000.0)
    assert stats.n_voxels_fitted == mask.sum()
    np.testing.assert_allclose(adc[mask == 1], true[mask == 1], rtol=1e-5)
    assert np.all(adc[mask == 0] == 0)

    errors = adc_error_vs_truth(out, tmp_path / "adc.nii.gz", mask_path)
    assert errors["median_abs_error"] == 0.0


def _row(qc_tsv: Path) -> dict[str, str]:
    [row] = read_tsv(qc_tsv).to_dict("records")
    return row


def test_qc_row_of_a_fit_with_the_true_adc(tmp_path):
    true = three_tissue_adc()
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, simulate(true))
    adc_path, true_path = tmp_path / "adc.nii.gz", tmp_path / "true.nii.gz"
    nib.save(nib.Nifti1Image(true, AFFINE), true_path)
    stats = fit_adc_file(dwi_path, bval_path, bvec_path, adc_path)
    qc_tsv = tmp_path / "qc" / "adc" / "07.tsv"

    metrics = write_qc_row(stats, "07", qc_tsv, adc_path=adc_path, true_adc_path=true_path)

    row = _row(qc_tsv)
    assert list(row) == [
        "scan_id", "stage", "source", "unit_conversion", "n_voxels_fitted", "n_clipped_low",
        "n_clipped_high", "n_nonpositive_signal", "median_in_mask", "b_values",
        "preferred_shells", "truth_median_abs_error", "truth_mean_abs_error",
        "truth_median_rel_error", "truth_n_voxels", "flagged",
    ]
    assert row == {"scan_id": "07", "stage": "adc", **{k: str(v) for k, v in metrics.items()},
                   "flagged": "False"}
    assert row["source"] == "fitted from DWI"
    assert row["unit_conversion"] == "none (fitted in mm2/s)"
    assert row["b_values"] == "0/500/1000"  # the shells fitted, as the series table writes them
    assert int(row["n_voxels_fitted"]) == int(row["truth_n_voxels"]) == true.size
    assert float(row["median_in_mask"]) == pytest.approx(np.median(true), rel=1e-5)
    assert float(row["truth_median_abs_error"]) < 1e-8


def test_qc_row_of_a_given_map_says_its_unit(tmp_path):
    given = tmp_path / "sub-07_adc.nii.gz"
    nib.save(nib.Nifti1Image(three_tissue_adc() * 1e6, AFFINE), given)  # scanner units
    stats = convert_adc_map_file(given, tmp_path / "adc.nii.gz")
    qc_tsv = tmp_path / "07.tsv"

    metrics = write_qc_row(stats, "07", qc_tsv)

    row = _row(qc_tsv)
    assert list(row) == ["scan_id", "stage", "source", "unit", "scale", "unit_conversion",
                         "n_voxels", "n_clipped_low", "n_clipped_high", "n_nonfinite",
                         "median_in_mask", "flagged"]
    assert row == {"scan_id": "07", "stage": "adc", **{k: str(v) for k, v in metrics.items()},
                   "flagged": "False"}
    assert (row["source"], row["unit"], row["scale"]) == ("given ADC map", "1e-6 mm2/s", "1e-06")
    with pytest.raises(ValueError, match="adc_path"):
        write_qc_row(stats, "07", qc_tsv, true_adc_path=given)


def test_mask_on_other_grid_is_rejected(tmp_path):
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, simulate(three_tissue_adc()))
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), AFFINE), mask_path)
    with pytest.raises(InputError, match="mask"):
        fit_adc_file(dwi_path, bval_path, bvec_path, tmp_path / "adc.nii.gz", mask_path)
    assert not (tmp_path / "adc.nii.gz").exists()


def test_missing_shell_names_bval_file(tmp_path):
    bvals = np.array([0, 500, 500, 500], dtype=float)
    dwi = simulate(three_tissue_adc(), bvals=bvals)
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, dwi, bvals, BVECS[:, :4])
    out = tmp_path / "adc.nii.gz"
    with pytest.raises(InputError, match="b=1000") as info:  # the paper's shells all required
        fit_adc_file(dwi_path, bval_path, bvec_path, out, accept_b=(0, 500, 1000))
    assert info.value.who == str(bval_path)
    assert not out.exists()
    no_b0 = np.array([500, 500, 1000, 1000], dtype=float)
    (tmp_path / "nob0").mkdir()
    files = write_dataset(tmp_path / "nob0", simulate(three_tissue_adc(), bvals=no_b0), no_b0,
                          BVECS[:, :4])
    with pytest.raises(InputError, match=r"^.*: no b=0 s/mm2 shell \(shells present: "
                                         r"\[500, 1000\]; required: \[0\.0\]\)$"):
        fit_adc_file(*files, out)
    assert not out.exists()


def test_two_shell_dwi_is_fitted_from_the_shells_present(tmp_path, caplog):
    true = three_tissue_adc()
    bvals = np.array([0, 1000, 1000, 1000], dtype=float)
    dwi = simulate(true, bvals=bvals)
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, dwi, bvals, BVECS[:, :4])
    with caplog.at_level("WARNING", logger="cesynth.adc"):
        stats = fit_adc_file(dwi_path, bval_path, bvec_path, tmp_path / "adc.nii.gz")
    assert stats.b_values == (0.0, 1000.0) and stats.preferred_shells is False
    # two points: ADC = -ln(S1000 / S0) / 1000, exactly the truth of the noiseless simulation
    fitted = nib.load(str(tmp_path / "adc.nii.gz")).get_fdata()
    np.testing.assert_allclose(fitted[true > 0], true[true > 0], rtol=1e-4)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "fitted from b = 0/1000 s/mm2" in warnings[0] and "b = 0/500/1000" in warnings[0]
    write_qc_row(stats, "07", tmp_path / "07.tsv")
    row = _row(tmp_path / "07.tsv")
    assert (row["b_values"], row["preferred_shells"]) == ("0/1000", "False")


def test_shells_used_counts_the_subjects_by_how_their_adc_was_made(tmp_path):
    true = three_tissue_adc()
    rows = []
    two_shell = np.array([0, 1000, 1000, 1000.0])
    for name, bvals in (("a", BVALS), ("b", two_shell), ("c", BVALS)):
        (tmp_path / name).mkdir()
        vecs = BVECS[:, :bvals.size]
        files = write_dataset(tmp_path / name, simulate(true, bvals=bvals), bvals, vecs)
        stats = fit_adc_file(*files, tmp_path / name / "adc.nii.gz")
        rows.append(tmp_path / name / "qc.tsv")
        write_qc_row(stats, name, rows[-1])
    given = tmp_path / "given.nii.gz"
    nib.save(nib.Nifti1Image(true * 1e6, AFFINE), given)
    rows.append(tmp_path / "given.tsv")
    write_qc_row(convert_adc_map_file(given, tmp_path / "mm2s.nii.gz"), "d", rows[-1])
    old = tmp_path / "old.tsv"  # a row written before the shells were spelled 0/500/1000
    old.write_text(rows[0].read_text().replace("0/500/1000", "(0.0, 500.0, 1000.0)"))
    assert shells_used([*rows, old]) == {"0/500/1000": 3, "0/1000": 1, "given ADC map": 1}
    with pytest.raises(InputError, match="not one ADC QC row"):
        shells_used([tmp_path / "a" / "qc.tsv", _two_rows(tmp_path)])


def _two_rows(tmp_path: Path) -> Path:
    path = tmp_path / "two.tsv"
    path.write_text("scan_id\tsource\na\tfitted from DWI\nb\tfitted from DWI\n")
    return path


def test_preferred_shells_are_fitted_alone_when_all_present(tmp_path):
    # 0/500/1000 data gives the same map with or without an extra b=2000 shell beside it
    true = three_tissue_adc()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stats_plain = fit_adc_file(*write_dataset(tmp_path / "a", simulate(true)),
                               tmp_path / "a.nii.gz")
    bvals = np.array([0, 500, 500, 500, 1000, 1000, 1000, 2000], dtype=float)
    vecs = np.concatenate([BVECS, BVECS[:, 1:2]], axis=1)
    stats_extra = fit_adc_file(*write_dataset(tmp_path / "b", simulate(true, bvals=bvals),
                                              bvals, vecs), tmp_path / "b.nii.gz")
    assert stats_plain.preferred_shells and stats_extra.preferred_shells
    assert stats_extra.b_values == (0.0, 500.0, 1000.0)
    np.testing.assert_array_equal(nib.load(str(tmp_path / "a.nii.gz")).get_fdata(),
                                  nib.load(str(tmp_path / "b.nii.gz")).get_fdata())


def test_gradient_length_mismatch(tmp_path):
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, simulate(three_tissue_adc()))
    with pytest.raises(InputError) as info:
        read_bvals_bvecs(bval_path, bvec_path, 8)
    assert info.value.who == str(bval_path)
    np.savetxt(bvec_path, BVECS[:, :6], fmt="%g")
    with pytest.raises(InputError) as info:
        read_bvals_bvecs(bval_path, bvec_path, 7)
    assert info.value.who == str(bvec_path)
    np.savetxt(bvec_path, BVECS[:2], fmt="%g")
    with pytest.raises(InputError, match="3 rows"):
        read_bvals_bvecs(bval_path, bvec_path, 7)
    with pytest.raises(InputError, match="not found"):
        read_bvals_bvecs(tmp_path / "nope.bval", bvec_path, 7)


def test_read_bvals_bvecs_values(tmp_path):
    _, bval_path, bvec_path = write_dataset(tmp_path, simulate(three_tissue_adc()))
    bvals, bvecs = read_bvals_bvecs(bval_path, bvec_path, 7)
    np.testing.assert_array_equal(bvals, BVALS)
    np.testing.assert_allclose(bvecs, BVECS)
    assert bvecs.shape == (3, 7)


def test_volume_weighting_is_the_all_volume_least_squares_fit():
    rng = np.random.default_rng(1)
    dwi = simulate(three_tissue_adc()) * rng.uniform(0.8, 1.2, SHAPE + (7,))
    design = np.column_stack([np.ones(7), -BVALS])
    all_volumes = np.linalg.lstsq(design, np.log(dwi.reshape(-1, 7)).T, rcond=None)[0][1]
    shells = group_shells(BVALS)
    by_volume, _ = fit_dwi_shells(dwi, BVALS, shells, weighting="volume", max_adc=1.0)
    np.testing.assert_allclose(by_volume.ravel(), all_volumes, rtol=1e-4, atol=1e-8)
    by_shell, _ = fit_adc(*shell_means(dwi, BVALS), max_adc=1.0)
    weights = [len(idx) for idx in shells]
    weighted, _ = fit_adc(*shell_means(dwi, BVALS), max_adc=1.0, weights=weights)
    np.testing.assert_allclose(weighted, by_volume, rtol=1e-5, atol=1e-9)
    assert np.median(np.abs(by_shell - by_volume)) > 1e-6  # 1 b0 vs 3 per shell: not the same


# ----------------------------------------------------------------------------- MRtrix3


def rician_phantom(rng: np.random.Generator, bvals: np.ndarray, sigma: float = 20.0):
    """Noisy isotropic DWI (Rician, S0 = 1000 so b0 SNR 50) with a brain-like region and mask."""
    shape = (40, 40, 12)
    true = three_tissue_adc(shape)
    clean = simulate(true, bvals=bvals)
    noise = rng.normal(0.0, sigma, clean.shape) + 1j * rng.normal(0.0, sigma, clean.shape)
    dwi = np.abs(clean + noise)
    mask = np.zeros(shape, dtype=bool)
    mask[4:-4, 4:-4, 2:-2] = True
    dwi[~mask] = np.abs(noise[~mask])  # background: noise only
    return dwi, mask


def run_dwi2adc(folder: Path, dwi_path: Path, bval_path: Path, bvec_path: Path) -> np.ndarray:
    out = folder / "mrtrix_adc.nii"
    subprocess.run(["dwi2adc", "-quiet", "-force", "-nthreads", "1", "-fslgrad", str(bvec_path),
                    str(bval_path), str(dwi_path), str(out)], check=True)
    result = nib.load(out)
    assert result.shape[3] == 2  # S0 then ADC
    return result.get_fdata()


@pytest.mark.skipif(shutil.which("dwi2adc") is None, reason="MRtrix3 dwi2adc not installed")
@pytest.mark.parametrize(
    ("bvals", "weighting"),
    [
        # 1 b0 + 3 directions x 2 shells: dwi2adc fits all volumes, i.e. weights shells by count
        (BVALS, "volume"),
        # equal volume counts per shell: the per-shell (method) fit is the same fit
        (np.array([0, 0, 0, 500, 500, 500, 1000, 1000, 1000], dtype=float), "shell"),
    ],
)
def test_agrees_with_mrtrix_dwi2adc(tmp_path, bvals, weighting):
    rng = np.random.default_rng(42)
    dwi, mask = rician_phantom(rng, bvals)
    directions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    bvecs = np.array([directions[0] if b == 0 else directions[1 + i % 3]
                      for i, b in enumerate(bvals)]).T
    dwi_path, bval_path, bvec_path = write_dataset(tmp_path, dwi, bvals, bvecs)
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), mask_path)
    out = tmp_path / "adc.nii.gz"
    fit_adc_file(dwi_path, bval_path, bvec_path, out, mask_path, max_adc=1.0,
                 weighting=weighting)
    ours = nib.load(out).get_fdata()
    mrtrix = run_dwi2adc(tmp_path, dwi_path, bval_path, bvec_path)
    assert np.median(mrtrix[..., 0][mask]) == pytest.approx(1000.0, rel=0.05)  # volume 0 is S0
    diff = np.abs(ours[mask] - mrtrix[..., 1][mask])
    assert np.median(diff) < 1e-6
