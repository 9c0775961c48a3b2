"""Tests for model-grid resampling and in-brain normalisation (cesynth.normalise)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cesynth.io import InputError, load_nifti, read_tsv, save_nifti
from cesynth.normalise import (
    NORMALISERS,
    SLICE_AXIS,
    ModelGrid,
    foreground_slice_range,
    normalise,
    prepare_image,
    prepare_mask,
    prepare_subject,
    to_model_grid,
    to_slice_major,
    write_qc_row,
)

NATIVE_SHAPE = (40, 48, 30)
NATIVE_ZOOMS = (1.2, 1.0, 2.0)
MODEL_SHAPE = (32, 40, 24)


def _affine(zooms=NATIVE_ZOOMS, flips=(1, 1, 1), origin=(-20.0, -30.0, -25.0)) -> np.ndarray:
    affine = np.diag([*(z * f for z, f in zip(zooms, flips, strict=True)), 1.0])
    affine[:3, 3] = origin
    return affine


def _blob(shape=NATIVE_SHAPE, centre=(22.0, 20.0, 14.0), radius=5.0) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return np.exp(-dist2 / (2 * radius**2)).astype(np.float32)


def _world_centroid(img: nib.Nifti1Image) -> np.ndarray:
    data = np.asanyarray(img.dataobj, dtype=float)
    index = (np.indices(data.shape).reshape(3, -1) * data.ravel()).sum(axis=1) / data.sum()
    return nib.affines.apply_affine(img.affine, index)


def _centre_world(img: nib.Nifti1Image) -> np.ndarray:
    return nib.affines.apply_affine(img.affine, (np.asarray(img.shape[:3]) - 1) / 2)


def _ellipsoid_mask(shape=NATIVE_SHAPE, centre=(20, 24, 15), radii=(14, 17, 9)) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    dist2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return (dist2 <= 1).astype(np.uint8)


# ---------------------------------------------------------------- to_model_grid


def test_to_model_grid_shape_voxel_size_and_field_of_view():
    img = nib.Nifti1Image(_blob(), _affine())
    out = to_model_grid(img, MODEL_SHAPE)
    assert out.shape == MODEL_SHAPE
    assert out.get_data_dtype() == np.float32
    expected_zooms = np.asarray(NATIVE_SHAPE) * NATIVE_ZOOMS / MODEL_SHAPE
    np.testing.assert_allclose(out.header.get_zooms(), expected_zooms, rtol=1e-6)
    np.testing.assert_allclose(ModelGrid(MODEL_SHAPE).voxel_size_for(img), expected_zooms)
    # same field of view: the world centre of the volume does not move
    np.testing.assert_allclose(_centre_world(out), _centre_world(img), atol=1e-6)


def test_to_model_grid_keeps_blob_position_within_a_voxel():
    img = nib.Nifti1Image(_blob(), _affine())
    for shape in (MODEL_SHAPE, (64, 80, 48)):  # down- and upsampling
        out = to_model_grid(img, shape)
        shift = np.abs(_world_centroid(out) - _world_centroid(img))
        assert np.all(shift < np.asarray(out.header.get_zooms()) * 0.5), (shape, shift)


def test_to_model_grid_identity_shape_returns_same_data():
    data = _blob()
    out = to_model_grid(nib.Nifti1Image(data, _affine()), NATIVE_SHAPE)
    np.testing.assert_allclose(np.asanyarray(out.dataobj), data, atol=1e-6)
    np.testing.assert_allclose(out.affine, _affine(), atol=1e-9)


def test_to_model_grid_mask_stays_binary_with_nearest_neighbour():
    mask = _ellipsoid_mask()
    out = to_model_grid(nib.Nifti1Image(mask, _affine()), MODEL_SHAPE, is_mask=True)
    values = np.unique(np.asanyarray(out.dataobj))
    assert out.get_data_dtype() == np.uint8
    assert set(values.tolist()) == {0, 1}
    native_ml = mask.sum() * np.prod(NATIVE_ZOOMS)
    model_ml = np.asanyarray(out.dataobj).sum() * np.prod(out.header.get_zooms())
    assert model_ml == pytest.approx(native_ml, rel=0.1)


@pytest.mark.parametrize("flips,codes", [((-1, 1, 1), ("L", "A", "S")),
                                         ((-1, -1, 1), ("L", "P", "S"))])
def test_to_model_grid_reorients_las_and_lps_to_ras(flips, codes):
    data = _blob()
    img = nib.Nifti1Image(data, _affine(flips=flips, origin=(20.0, 30.0, -25.0)))
    assert nib.aff2axcodes(img.affine) == codes
    out = to_model_grid(img, NATIVE_SHAPE)
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    flipped_axes = tuple(ax for ax, f in enumerate(flips) if f < 0)
    np.testing.assert_allclose(np.asanyarray(out.dataobj), np.flip(data, flipped_axes), atol=1e-6)
    np.testing.assert_allclose(_world_centroid(out), _world_centroid(img), atol=1e-4)
    resized = to_model_grid(img, MODEL_SHAPE)
    assert nib.aff2axcodes(resized.affine) == ("R", "A", "S")
    assert np.all(np.abs(_world_centroid(resized) - _world_centroid(img))
                  < np.asarray(resized.header.get_zooms()) * 0.5)


def test_to_model_grid_rejects_4d_and_bad_shapes():
    with pytest.raises(InputError, match="3D"):
        to_model_grid(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), (2, 2, 2))
    with pytest.raises(InputError, match="shape"):
        ModelGrid((0, 2, 2))


def test_slice_major_gives_paper_patch_layout():
    volume = np.zeros((192, 256, 192), dtype=np.uint8)
    assert SLICE_AXIS == 2
    assert to_slice_major(volume)[10:13].shape == (3, 256, 192)


# ---------------------------------------------------------------- foreground slices


def test_foreground_slice_range_on_known_mask():
    mask = np.zeros((10, 12, 20), dtype=np.uint8)
    mask[3:6, 4:8, 5:15] = 1
    mask[0, 0, 17] = 1  # a single voxel still counts
    assert foreground_slice_range(mask) == (5, 17)
    assert foreground_slice_range(mask, axis=0) == (0, 5)


def test_foreground_slice_range_empty_mask_raises():
    with pytest.raises(InputError, match="empty"):
        foreground_slice_range(np.zeros((4, 4, 4), dtype=np.uint8))


# ---------------------------------------------------------------- normalise


@pytest.fixture
def image_and_mask():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 300.0, size=(30, 30, 20)).astype(np.float32)
    mask = np.zeros(data.shape, dtype=np.uint8)
    mask[5:25, 5:25, 3:17] = 1
    data[mask == 0] = 5000.0  # bright background must not leak into the result
    return data, mask


@pytest.mark.parametrize("method", sorted(NORMALISERS))
def test_normalise_range_zero_outside_and_monotonic(image_and_mask, method):
    data, mask = image_and_mask
    out = normalise(data, mask, method)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() == pytest.approx(1.0)
    assert np.all(out[mask == 0] == 0.0)
    inside, result = data[mask > 0], out[mask > 0]
    assert np.all(np.diff(result[np.argsort(inside, kind="stable")]) >= 0)


@pytest.mark.parametrize("method", sorted(NORMALISERS))
def test_normalise_is_deterministic(image_and_mask, method):
    data, mask = image_and_mask
    first = normalise(data, mask, method)
    np.testing.assert_array_equal(first, normalise(data.copy(), mask.copy(), method))


def test_histeq_gives_uniform_distribution_in_mask(image_and_mask):
    data, mask = image_and_mask
    out = normalise(data, mask, "histeq")
    counts, _ = np.histogram(out[mask > 0], bins=10, range=(0, 1))
    fractions = counts / counts.sum()
    np.testing.assert_allclose(fractions, 0.1, atol=0.01)


def test_histeq_binned_option_is_close_to_exact(image_and_mask):
    data, mask = image_and_mask
    exact = normalise(data, mask, "histeq")
    binned = normalise(data, mask, "histeq", nbins=256)
    assert np.abs(exact - binned)[mask > 0].mean() < 0.02


def test_percentile_clips_outliers(image_and_mask):
    data, mask = image_and_mask
    spiked = data.copy()
    spiked[10, 10, 10] = 1e7
    spiked[11, 11, 11] = -1e7
    out = normalise(spiked, mask, "percentile")
    assert out[10, 10, 10] == 1.0 and out[11, 11, 11] == 0.0
    # the bulk is not squashed by the outlier
    assert 0.2 < np.median(out[mask > 0]) < 0.6
    low, high = np.percentile(spiked[mask > 0], [0.5, 99.5])
    inner = (spiked > low) & (spiked < high) & (mask > 0)
    np.testing.assert_allclose(out[inner], (spiked[inner] - low) / (high - low), rtol=1e-5)


def test_percentile_options_and_errors(image_and_mask):
    data, mask = image_and_mask
    wide = normalise(data, mask, "percentile", p_low=0.0, p_high=100.0)
    assert wide[mask > 0].min() == 0.0 and wide[mask > 0].max() == 1.0
    with pytest.raises(InputError, match="unknown"):
        normalise(data, mask, "zscore")
    with pytest.raises(InputError, match="empty"):
        normalise(data, np.zeros_like(mask))
    with pytest.raises(InputError):
        normalise(data, mask, "percentile", p_low=99.0, p_high=1.0)


def test_constant_image_gives_zeros(image_and_mask):
    _, mask = image_and_mask
    for method in NORMALISERS:
        out = normalise(np.full(mask.shape, 7.0, np.float32), mask, method)
        assert np.all(out == 0.0)


# ---------------------------------------------------------------- prepare_subject


def test_prepare_subject_with_missing_t2(tmp_path):
    affine = _affine()
    mask = _ellipsoid_mask()
    native = tmp_path / "native"
    paths = {
        "T1w": save_nifti(_blob() * 900 + 100, affine, native / "t1.nii.gz"),
        "T2w": None,
        "adc": save_nifti(_blob() * 1e-3 + 7e-4, affine, native / "adc.nii.gz"),
        "ceT1w": save_nifti(_blob(radius=3) * 1500 + 100, affine, native / "ce.nii.gz"),
    }
    mask_path = save_nifti(mask, affine, native / "mask.nii.gz", dtype=np.uint8)
    out = tmp_path / "model"
    out_paths = {m: out / f"sub-01_space-model_desc-norm_{m}.nii.gz" for m in paths}
    sidecar_path = out / "sub-01_space-model_desc-norm.json"

    sidecar = prepare_subject(paths, mask_path, out_paths, out / "mask.nii.gz", MODEL_SHAPE,
                              sidecar_path=sidecar_path)

    assert sidecar["missing"] == ["T2w"]
    assert not out_paths["T2w"].exists()
    model_mask = np.asanyarray(load_nifti(out / "mask.nii.gz").dataobj)
    assert model_mask.shape == MODEL_SHAPE
    first, last = foreground_slice_range(model_mask)
    assert sidecar["foreground_slices"] == [first, last]
    # the native mask spans z in [6, 24] of 30 slices -> the same fraction of 24 model slices
    assert first == pytest.approx(6 * 24 / 30, abs=1) and last == pytest.approx(24 * 24 / 30, abs=1)
    assert sidecar["shape"] == list(MODEL_SHAPE) and sidecar["method"] == "histeq"
    assert sidecar["slice_axis"] == 2 and set(sidecar["stats"]) == {"T1w", "adc", "ceT1w"}
    assert sidecar["stats"]["adc"]["median"] == pytest.approx(1.2e-3, rel=0.5)
    assert json.loads(sidecar_path.read_text()) == json.loads(json.dumps(sidecar))
    for name in ("T1w", "adc", "ceT1w"):
        img = load_nifti(out_paths[name])
        data = np.asanyarray(img.dataobj)
        assert img.shape == MODEL_SHAPE and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert data.min() >= 0 and data.max() <= 1 and np.all(data[model_mask == 0] == 0)


def test_per_image_jobs_give_the_voxels_of_prepare_subject(tmp_path):
    # The workflow runs one job per image (prepare_mask, prepare_image); predict runs
    # prepare_subject: both must hand the model identical inputs.
    affine = _affine()
    mask_path = save_nifti(_ellipsoid_mask(), affine, tmp_path / "mask.nii.gz", dtype=np.uint8)
    t1_path = save_nifti(_blob() * 900 + 100, affine, tmp_path / "t1.nii.gz")
    whole = prepare_subject({"T1w": t1_path}, mask_path, {"T1w": tmp_path / "a_t1.nii.gz"},
                            tmp_path / "a_mask.nii.gz", MODEL_SHAPE)
    mask_sidecar = prepare_mask(mask_path, tmp_path / "b_mask.nii.gz", MODEL_SHAPE)
    stats = prepare_image(t1_path, mask_path, tmp_path / "b_t1.nii.gz", MODEL_SHAPE)
    for name in ("t1", "mask"):
        np.testing.assert_array_equal(
            np.asanyarray(load_nifti(tmp_path / f"a_{name}.nii.gz").dataobj),
            np.asanyarray(load_nifti(tmp_path / f"b_{name}.nii.gz").dataobj))
    assert mask_sidecar["foreground_slices"] == whole["foreground_slices"]
    assert stats == whole["stats"]["T1w"]


def test_prepare_subject_rejects_off_grid_image_and_writes_nothing(tmp_path):
    mask_path = save_nifti(_ellipsoid_mask(), _affine(), tmp_path / "mask.nii.gz", dtype=np.uint8)
    t1 = save_nifti(_blob(), _affine(origin=(0.0, 0.0, 0.0)), tmp_path / "t1.nii.gz")
    out_t1 = tmp_path / "out" / "t1.nii.gz"
    with pytest.raises(InputError, match="grid"):
        prepare_subject({"T1w": t1}, mask_path, {"T1w": out_t1}, tmp_path / "out" / "m.nii.gz",
                        MODEL_SHAPE)
    assert not out_t1.exists()
    with pytest.raises(InputError, match="T1w is required"):
        prepare_subject({"T1w": None}, mask_path, {}, tmp_path / "m.nii.gz", MODEL_SHAPE)


# ---------------------------------------------------------------- QC row

STAT_COLUMNS = ["brain_n_voxels", "brain_mean", "brain_std", "brain_min", "brain_p0.5",
                "brain_median", "brain_p99.5", "brain_max", "brain_saturated_share",
                "brain_saturated_excluded"]


def _qc_row_of(tmp_path, modality, values):
    """Prepare one image on the model grid, write its QC row; (stats, returned, row read back)."""
    affine = _affine()
    mask_path = save_nifti(_ellipsoid_mask(), affine, tmp_path / "mask.nii.gz", dtype=np.uint8)
    image_path = save_nifti(values, affine, tmp_path / f"{modality}.nii.gz")
    stats = prepare_image(image_path, mask_path, tmp_path / "model.nii.gz", MODEL_SHAPE)
    qc_tsv = tmp_path / "qc" / "normalise" / "07.tsv"
    returned = write_qc_row(stats, modality, "07", qc_tsv)
    [row] = read_tsv(qc_tsv).to_dict("records")
    return stats, returned, row


@pytest.mark.parametrize("unit, implausible", [(1.0, False), (1e3, True)])  # mm2/s, um2/ms
def test_qc_row_of_an_adc_map_checks_its_brain_median(tmp_path, unit, implausible):
    stats, returned, row = _qc_row_of(tmp_path, "adc", (_blob() * 1e-3 + 7e-4) * unit)
    assert list(row) == ["scan_id", "stage", "modality", *STAT_COLUMNS,
                         "adc_median_implausible", "flagged"]
    assert row == {"scan_id": "07", "stage": "normalise", "modality": "adc",
                   **{f"brain_{key}": str(value) for key, value in stats.items()},
                   "adc_median_implausible": str(implausible), "flagged": str(implausible)}
    assert (0.6e-3 <= float(row["brain_median"]) <= 1.2e-3) != implausible
    assert returned == {**stats, "adc_median_implausible": implausible}


def test_qc_row_of_another_modality_has_no_flag(tmp_path):
    stats, returned, row = _qc_row_of(tmp_path, "T1w", _blob() * 900 + 100)
    assert list(row) == ["scan_id", "stage", "modality", *STAT_COLUMNS, "flagged"]
    assert (row["modality"], row["flagged"]) == ("T1w", "False")
    assert row["brain_n_voxels"] == str(stats["n_voxels"])
    assert returned == stats


def _biased_tissue(tmp_path):
    """A flat tissue ball under a smooth 40 % multiplicative bias field, and its mask."""
    shape = (40, 40, 30)
    grid = np.indices(shape, dtype=float)
    ball = ((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + ((grid[2] - 15) * 1.3) ** 2) <= 14 ** 2
    bias = 0.8 + 0.4 * grid[0] / shape[0]
    rng = np.random.default_rng(0)
    image = np.where(ball, 1000.0 * bias * (1 + 0.01 * rng.standard_normal(shape)), 0.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {}
    for name, data in (("image", image), ("mask", ball.astype(np.uint8))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        save_nifti(data, affine, paths[name], dtype=np.float32)
    return paths, ball


def test_n4_removes_a_bias_field_from_weighted_images_but_never_from_the_adc(tmp_path):
    from cesynth.normalise import prepare_image

    paths, _ = _biased_tissue(tmp_path)
    out = {}
    for name, modality, correction in (("plain", "T1w", "none"), ("n4", "T1w", "n4"),
                                       ("adc", "adc", "n4")):
        out[name] = tmp_path / f"{name}.nii.gz"
        prepare_image(paths["image"], paths["mask"], out[name], (40, 40, 30), "percentile",
                      modality=modality, bias_correction=correction)
    mask = np.asarray(load_nifti(tmp_path / "plain.nii.gz").dataobj) > 0
    x = np.indices(mask.shape)[0][mask]
    trend = {name: abs(np.corrcoef(np.asarray(load_nifti(path).dataobj)[mask], x)[0, 1])
             for name, path in out.items()}
    assert trend["plain"] > 0.9 and trend["n4"] < 0.75 * trend["plain"]  # the field is weaker
    assert trend["adc"] == trend["plain"]  # a quantitative map is left alone


def test_an_unknown_bias_correction_stops_with_one_line(tmp_path):
    from cesynth.normalise import prepare_image

    paths, _ = _biased_tissue(tmp_path)
    with pytest.raises(InputError, match="normalise.bias_correction: 'n3': choose one of"):
        prepare_image(paths["image"], paths["mask"], tmp_path / "x.nii.gz", (20, 20, 15),
                      modality="T1w", bias_correction="n3")
    assert not (tmp_path / "x.nii.gz").exists()


# ---------------------------------------------------------------- saturation


def _saturated_tissue(tmp_path, saturated_share=0.02):
    """The biased tissue ball stored as int16 with its brightest ``saturated_share`` clipped at
    32767 (a CE-T1 as one BraTS case stores it), and its mask."""
    paths, ball = _biased_tissue(tmp_path)
    image = np.asarray(load_nifti(paths["image"]).dataobj, dtype=float)
    clip = np.percentile(image[ball], 100 * (1 - saturated_share))
    stored = np.clip(np.rint(image * 32767 / clip), 0, 32767).astype(np.int16)
    paths["saturated"] = save_nifti(stored, load_nifti(paths["image"]).affine,
                                    tmp_path / "saturated.nii.gz", dtype=np.int16)
    return paths, ball


@pytest.mark.parametrize("method", ["histeq", "percentile"])
def test_saturated_voxels_are_left_out_of_the_reference_and_set_to_one(method):
    rng = np.random.default_rng(3)
    mask = _ellipsoid_mask()
    data = np.where(mask, rng.gamma(4.0, 100.0, mask.shape), 0.0)
    level = np.percentile(data[mask > 0], 97.0)
    clipped = np.minimum(data, level)
    saturated = (clipped >= level) & (mask > 0)
    out = normalise(clipped, mask, method, saturated=saturated)
    assert np.all(out[saturated] == 1.0)
    rest = (mask > 0) & ~saturated
    alone = NORMALISERS[method](clipped[rest].astype(np.float64))
    np.testing.assert_array_equal(out[rest], np.clip(alone, 0, 1))
    kept = normalise(clipped, mask, method)
    assert not np.array_equal(kept[rest], out[rest])  # the plateau moved the others
    # no saturated voxel: the very same output as without the argument
    np.testing.assert_array_equal(normalise(data, mask, method, saturated=np.zeros_like(mask)),
                                  normalise(data, mask, method))


def test_a_saturated_ce_t1_is_detected_on_its_native_grid_and_excluded(tmp_path):
    paths, ball = _saturated_tissue(tmp_path)
    outputs, stats = {}, {}
    for handling in ("exclude", "keep"):
        outputs[handling] = tmp_path / f"{handling}.nii.gz"
        stats[handling] = prepare_image(paths["saturated"], paths["mask"], outputs[handling],
                                        (40, 40, 30), "percentile", modality="ceT1w",
                                        saturation=handling)
    for handling in ("exclude", "keep"):
        assert stats[handling]["saturated_share"] == pytest.approx(0.02, rel=0.1)
    assert stats["exclude"]["saturated_excluded"] > 0.015 * ball.sum()
    assert stats["keep"]["saturated_excluded"] == 0
    excluded = np.asarray(load_nifti(outputs["exclude"]).dataobj)[ball]
    kept = np.asarray(load_nifti(outputs["keep"]).dataobj)[ball]
    # the percentiles come from the unsaturated voxels: the 99.5th no longer sits on the plateau
    assert np.mean(excluded == 1.0) == pytest.approx(0.02 + 0.005 * 0.98, abs=0.004)
    assert np.mean(kept == 1.0) > np.mean(excluded == 1.0) - 0.005
    assert np.median(excluded) != np.median(kept)
    # the limit decides: a 2 % plateau under a 5 % limit is not saturation
    below = prepare_image(paths["saturated"], paths["mask"], tmp_path / "below.nii.gz",
                          (40, 40, 30), "percentile", modality="ceT1w",
                          saturation_min_share=0.05)
    assert below["saturated_excluded"] == 0
    np.testing.assert_array_equal(np.asarray(load_nifti(tmp_path / "below.nii.gz").dataobj),
                                  np.asarray(load_nifti(outputs["keep"]).dataobj))


def test_saturation_is_found_before_the_bias_correction_flattens_it(tmp_path):
    paths, ball = _saturated_tissue(tmp_path)
    stats = prepare_image(paths["saturated"], paths["mask"], tmp_path / "n4.nii.gz",
                          (40, 40, 30), "histeq", modality="ceT1w", bias_correction="n4")
    assert stats["saturated_excluded"] > 0.015 * ball.sum()
    out = np.asarray(load_nifti(tmp_path / "n4.nii.gz").dataobj)[ball]
    assert np.mean(out == 1.0) == pytest.approx(0.02, abs=0.004)


def test_an_image_without_saturation_is_normalised_as_before_the_option(tmp_path):
    """The default (exclude) must not change an image that has no plateau: the phantom's."""
    paths, _ = _biased_tissue(tmp_path)
    for method in ("histeq", "percentile"):
        for handling in ("exclude", "keep"):
            prepare_image(paths["image"], paths["mask"], tmp_path / f"{method}_{handling}.nii.gz",
                          (40, 40, 30), method, modality="T1w", saturation=handling)
        assert (load_nifti(tmp_path / f"{method}_exclude.nii.gz").get_fdata()
                == load_nifti(tmp_path / f"{method}_keep.nii.gz").get_fdata()).all()
    with pytest.raises(InputError, match="normalise.saturation: 'clip': choose one of"):
        prepare_image(paths["image"], paths["mask"], tmp_path / "x.nii.gz", (40, 40, 30),
                      modality="T1w", saturation="clip")
