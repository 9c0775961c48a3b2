"""Published cohorts: a given ADC (or MD) map in place of the DWI, in whatever unit it comes,
and datasets declared co-registered or skull-stripped (config ``ingest``), on real NIfTI files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.bids_builder import AFFINE, SHAPE, add_subject, ellipsoid, make_dataset, save

from cesynth import adc_maps, ants_transforms, brainmask, preprocessing, registration
from cesynth.ingest import discover_bids, scan_from_rule_inputs
from cesynth.io import InputError, read_json
from cesynth.validation import validate_scan


def adc_map(scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """A brain-like ADC map in mm2/s times ``scale``: WM 0.75e-3, GM 0.85e-3, CSF 3e-3 inside an
    ellipsoid, 0 outside (as scanners and DTIFIT write them)."""
    inside = ellipsoid(seed=seed) > 500
    values = np.full(SHAPE, 0.75e-3, np.float32)
    values[: SHAPE[0] // 3] = 0.85e-3
    values[SHAPE[0] - 2:] = 3.0e-3
    return (np.where(inside, values, 0) * scale).astype(np.float32)


# ------------------------------------------------------------------------ units


@pytest.mark.parametrize(("unit", "scale"), [("mm2/s", 1.0), ("1e-3 mm2/s", 1e3),
                                             ("1e-6 mm2/s", 1e6), ("m2/s", 1e-6)])
def test_each_unit_is_detected_and_converted_to_mm2_s(tmp_path, unit, scale):
    source = save(adc_map(scale), tmp_path / "sub-01_adc.nii.gz")
    out = tmp_path / "out" / "sub-01_adc.nii.gz"
    stats = adc_maps.convert_adc_map_file(source, out, who="sub-01")
    assert stats.unit == unit
    assert stats.scale == pytest.approx(1 / scale)
    assert stats.source == "given ADC map"
    assert ("as given" in stats.unit_conversion) == (unit == "mm2/s")
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    assert np.allclose(img.affine, AFFINE)
    np.testing.assert_allclose(img.get_fdata(), adc_map(), rtol=1e-5, atol=1e-12)
    assert stats.median_in_mask == pytest.approx(0.75e-3, rel=1e-5)


def test_a_map_in_no_known_unit_is_refused_with_one_line(tmp_path):
    source = save(adc_map(3.2e4 / 0.75e-3), tmp_path / "sub-07_adc.nii.gz")
    out = tmp_path / "out.nii.gz"
    with pytest.raises(InputError) as caught:
        adc_maps.convert_adc_map_file(source, out, who="sub-07")
    message = f"error: {caught.value}"
    assert message == ("error: sub-07: sub-07_adc.nii.gz: ADC median 3.2e+04 is in no known "
                       "unit (mm2/s, 1e-3 mm2/s, 1e-6 mm2/s, m2/s)")
    assert "\n" not in message
    assert not out.exists()


def test_unit_windows_do_not_overlap_and_reject_between_units():
    units = adc_maps.ADC_UNITS
    assert adc_maps.detect_adc_unit(np.array([1.0e-3]), "x").unit == "mm2/s"
    assert adc_maps.detect_adc_unit(np.array([1000.0]), "x").unit == "1e-6 mm2/s"
    assert adc_maps.detect_adc_unit(np.array([1.0e-9]), "x").unit == "m2/s"
    for value in (1e-2, 10.0, 3e4, 1e-11):  # between the windows, or beyond them
        with pytest.raises(InputError, match="no known unit"):
            adc_maps.detect_adc_unit(np.array([value]), "x")
    low, high = adc_maps.ADC_MEDIAN_WINDOW_MM2_S
    scales = sorted(units.values())
    assert all(b / a >= high / low for a, b in zip(scales, scales[1:], strict=False))


def test_md_sidecar_is_accepted_as_adc_and_said_so(tmp_path):
    source = save(adc_map(), tmp_path / "sub-01_adc.nii.gz")
    sidecar = tmp_path / "sub-01_adc.json"
    sidecar.write_text(json.dumps({"Description": "MD from FSL DTIFIT"}))
    stats = adc_maps.convert_adc_map_file(source, tmp_path / "out.nii.gz")
    assert stats.source == "given MD map"
    sidecar.write_text(json.dumps({"Source": "scanner ADC (trace)"}))
    assert adc_maps.adc_map_kind(sidecar) == "ADC"
    assert adc_maps.adc_map_kind(None) == "ADC"


def test_nonfinite_and_negative_voxels_become_zero_and_outliers_are_clipped(tmp_path):
    data = adc_map(1e6)
    data[0, 0, 0], data[1, 0, 0], data[6, 7, 5] = np.nan, -50.0, 9000.0
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "m.nii.gz")
    stats = adc_maps.convert_adc_map_file(tmp_path / "m.nii.gz", tmp_path / "o.nii.gz",
                                     max_adc=4e-3)
    out = nib.load(tmp_path / "o.nii.gz").get_fdata()
    assert np.isfinite(out).all() and out.min() == 0.0
    assert out.max() == pytest.approx(4e-3)
    assert stats.n_nonfinite == 1 and stats.n_clipped_high == 1


# ------------------------------------------------------------------------ ingest


def test_discovery_finds_a_given_adc_map_and_a_dataset_brain_mask(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    paths = add_subject(root, "02", modalities=("T1w", "ceT1w", "T2w"))
    save(adc_map(1e6), root / "sub-02" / "dwi" / "sub-02_adc.nii.gz")
    mask = save((ellipsoid() > 500).astype(np.uint8),
                paths["T1w"].parent / "sub-02_desc-brain_mask.nii.gz")
    scans = {scan.scan_id: scan for scan in discover_bids(root)}
    assert scans["01"].adc_source == "dwi" and scans["01"].adc is None
    assert scans["02"].adc_source == "map"
    assert scans["02"].adc.name == "sub-02_adc.nii.gz" and scans["02"].dwi is None
    assert scans["02"].brain_mask == mask
    assert scans["02"].available_modalities() == ("T1w", "ceT1w", "T2w", "adc")
    assert scans["02"].missing_modalities() == ()
    report = validate_scan(scans["02"])
    assert report["modalities"] == ["T1w", "ceT1w", "T2w", "adc"]
    assert set(report["files"]) >= {"adc", "brain_mask"}
    rebuilt = scan_from_rule_inputs("02", {"t1w": paths["T1w"], "adc": scans["02"].adc})
    assert rebuilt.adc == scans["02"].adc and rebuilt.adc_source == "map"


def test_a_4d_adc_map_is_refused_at_validation(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01", modalities=("T1w", "ceT1w"))
    save(np.stack([adc_map()] * 2, axis=-1), root / "sub-01" / "dwi" / "sub-01_adc.nii.gz")
    (scan,) = discover_bids(root)
    with pytest.raises(InputError, match=r"^sub-01: sub-01_adc.nii.gz: expected a 3D image"):
        validate_scan(scan)


# ------------------------------------------------------------------------ co-registered


def test_identity_registration_copies_the_image_and_writes_an_identity_transform(tmp_path):
    fixed = save(ellipsoid(seed=1), tmp_path / "ce.nii.gz")
    moving = save(ellipsoid(seed=2), tmp_path / "sub-01_T2w.nii.gz")
    out, xfm, qc_tsv = tmp_path / "reg.nii.gz", tmp_path / "x_xfm.mat", tmp_path / "qc.tsv"
    result = registration.identity_to_reference(fixed, moving, out, xfm, who="sub-01")
    np.testing.assert_array_equal(nib.load(out).get_fdata(), nib.load(moving).get_fdata())
    assert np.allclose(nib.load(out).affine, AFFINE)
    matrix = ants_transforms.ants_transform_to_ras(ants_transforms.read_ants_transform(xfm))
    np.testing.assert_allclose(matrix, np.eye(4), atol=1e-12)
    # the transform works wherever a registration's does
    applied = registration.apply_registration(fixed, moving, xfm, tmp_path / "again.nii.gz")
    np.testing.assert_allclose(nib.load(applied).get_fdata(), nib.load(moving).get_fdata(),
                               atol=1e-3)
    registration.write_qc_row(result, "01", "T2w", qc_tsv, method=registration.IDENTITY_METHOD)
    row = qc_tsv.read_text().splitlines()
    assert "identity (declared co-registered)" in row[1]
    assert "mi_not_improved" not in row[0]


def test_identity_registration_off_the_grid_fails_with_one_line_naming_subject_and_file(
        tmp_path):
    fixed = save(ellipsoid(seed=1), tmp_path / "ce.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    moving = save(ellipsoid(seed=2), tmp_path / "sub-03_T1w.nii.gz", affine=shifted)
    out, xfm = tmp_path / "reg.nii.gz", tmp_path / "x_xfm.mat"
    with pytest.raises(InputError) as caught:
        registration.identity_to_reference(fixed, moving, out, xfm, who="sub-03")
    message = str(caught.value)
    assert message.startswith("sub-03: sub-03_T1w.nii.gz: not on the CE-T1 grid: affine off by 2")
    assert "ingest.coregistered" in message and "\n" not in message
    assert not out.exists() and not xfm.exists()


# ------------------------------------------------------------------------ skull-stripped


def skull_stripped(seed: int = 1) -> np.ndarray:
    """A skull-stripped image: the ellipsoid's intensities inside, exact zeros outside, with
    a few dark (zero) voxels inside the brain that the mask must still hold."""
    data = ellipsoid(seed=seed)
    inside = ellipsoid(seed=seed, scale=1.0) > 0.5
    data = np.where(inside, np.maximum(data, 1.0), 0).astype(np.float32)
    data[6, 7, 5] = 0.0
    return data


def test_nonzero_mask_is_the_brain_of_a_skull_stripped_image(tmp_path):
    image = save(skull_stripped(), tmp_path / "sub-01_ce-gadolinium_T1w.nii.gz")
    out, sidecar = tmp_path / "mask.nii.gz", tmp_path / "mask.json"
    info = brainmask.declared_brain_mask_file(image, out, reference="ceT1w",
                                              sidecar_path=sidecar)
    mask = nib.load(out).get_fdata() > 0
    assert mask[6, 7, 5]  # the hole is filled
    assert brainmask.dice(mask, skull_stripped() > 0) > 0.98
    record = read_json(sidecar)
    assert record["Method"] == "nonzero" and record["RequestedMethod"] == "skull-stripped"
    assert record["Reference"] == "ceT1w" and record["IsotropicVoxelMM"] is None
    assert "nonzero region of sub-01_ce-gadolinium_T1w.nii.gz" in record["Source"]
    assert info["volume_ml"] == pytest.approx(record["VolumeMl"])


def test_nonzero_mask_refuses_an_image_that_is_not_skull_stripped(tmp_path):
    image = save(ellipsoid(seed=1) + 5.0, tmp_path / "sub-01_ce-gadolinium_T1w.nii.gz")
    with pytest.raises(InputError, match=r"sub-01_ce-gadolinium_T1w.nii.gz: 100% of the grid "
                                         r"is nonzero: not a skull-stripped image"):
        brainmask.declared_brain_mask_file(image, tmp_path / "m.nii.gz")


def test_a_dataset_mask_is_used_as_given_and_must_be_on_the_ce_grid(tmp_path):
    image = save(skull_stripped(), tmp_path / "ce.nii.gz")
    given = (ellipsoid(seed=3) > 500).astype(np.uint8)
    provided = save(given, tmp_path / "sub-01_desc-brain_mask.nii.gz")
    out, sidecar = tmp_path / "mask.nii.gz", tmp_path / "mask.json"
    brainmask.declared_brain_mask_file(image, out, provided_path=provided, sidecar_path=sidecar)
    np.testing.assert_array_equal(nib.load(out).get_fdata(), given)
    record = read_json(sidecar)
    assert record["Method"] == "provided"
    assert "sub-01_desc-brain_mask.nii.gz" in record["Source"]
    shifted = AFFINE.copy()
    shifted[1, 3] += 4
    off = save(given, tmp_path / "off_desc-brain_mask.nii.gz", affine=shifted)
    with pytest.raises(InputError, match="not on the CE-T1 grid"):
        brainmask.declared_brain_mask_file(image, tmp_path / "m2.nii.gz", provided_path=off)


def _sidecar(path: Path, method: str) -> Path:
    path.write_text(json.dumps({"Method": method, "Reference": "ceT1w"}))
    return path


def test_the_record_of_a_skull_stripped_dataset_and_what_predict_makes_of_it(tmp_path):
    from cesynth.predict_inputs import _brainmask_method

    config = {"model_grid": {"shape": [16, 16, 8]}, "normalise": {"method": "histeq"},
              "brainmask": {"method": "auto", "reference": "ceT1w"},
              "ingest": {"b_values": [0, 500, 1000], "b_tolerance": 50,
                         "skull_stripped": True},
              "adc": {"min_adc": 0.0, "max_adc": 4e-3}, "registration": {"seed": 0}}
    requested = preprocessing.requested_settings(config)
    assert requested["brainmask"] == "skull-stripped"
    sidecars = [_sidecar(tmp_path / f"{i}.json", "nonzero") for i in range(2)]
    resolved = preprocessing.resolve_training_masks(sidecars, "skull-stripped", "ceT1w")
    assert resolved["method"] == "nonzero"
    with pytest.raises(InputError, match="declares the dataset skull-stripped"):
        preprocessing.resolve_training_masks([_sidecar(tmp_path / "d.json", "deepbet")],
                                             "skull-stripped", "ceT1w")
    config["ingest"]["skull_stripped"] = False
    assert preprocessing.requested_settings(config)["brainmask"] == "auto"
    # predict: refused with one line unless told the scans are skull-stripped too
    with pytest.raises(InputError, match="declared skull-stripped.*--brainmask-method nonzero"):
        _brainmask_method("nonzero", None, "model.pt", {}, {})
    overrides: dict = {}
    assert _brainmask_method("nonzero", "nonzero", "model.pt", overrides, {}) == "nonzero"
    assert overrides == {}
    assert _brainmask_method("provided", "nonzero", "model.pt", overrides, {}) == "nonzero"
    assert overrides["BrainMaskMethod"] == {"Recorded": "provided", "Used": "nonzero"}


def test_predict_brings_a_given_map_in_scanner_units_to_mm2_s_before_registering(tmp_path):
    from cesynth.predict_inputs import StepTimer, check_scans, register_inputs

    t1 = save(ellipsoid(seed=1), tmp_path / "t1.nii.gz")
    given = save(adc_map(1e6), tmp_path / "adc.nii.gz")
    scans = check_scans(t1, adc=given)
    native, info = register_inputs(scans, ["T1w", "adc"], tmp_path, StepTimer(), threads=1,
                                   seed=0)
    assert info["adc"]["unit"] == "1e-6 mm2/s" and info["adc"]["source"] == "given ADC map"
    values = nib.load(native["adc"]).get_fdata()
    assert 0.5e-3 < np.median(values[values > 0]) < 1.5e-3
