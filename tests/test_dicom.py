"""Tests of DICOM-to-BIDS conversion on DICOM series written with pydicom and read by dcm2niix."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.bids_builder import tree_fingerprint
from helpers.dicom_writer import FAKE_IDENTIFIERS, write_series_from_volume
from pydicom.uid import generate_uid

from cesynth.dicom import convert_dicom_subject, find_dcm2niix, scrub_sidecar
from cesynth.ingest import discover_bids
from cesynth.io import InputError
from cesynth.validation import validate_scan


def _dcm2niix_available() -> bool:
    try:
        find_dcm2niix()
    except InputError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _dcm2niix_available(),
                                reason="dcm2niix binary not found (pip install dcm2niix)")

SHAPE = (12, 14, 10)
AXIAL = np.array([[2.0, 0, 0, -12], [0, 2.0, 0, -14], [0, 0, 2.5, -12], [0, 0, 0, 1]])
FLIPPED_X = np.array([[-1.5, 0, 0, 10], [0, 2.0, 0, -14], [0, 0, 3.0, -15], [0, 0, 0, 1]])
BVALS = np.array([0, 500, 500, 500, 1000, 1000, 1000], float)
DIRECTIONS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                       [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
T2_TAGS = {"RepetitionTime": 4000.0, "EchoTime": 100.0, "ScanningSequence": "SE"}
FLAIR_TAGS = {"RepetitionTime": 9000.0, "EchoTime": 120.0, "InversionTime": 2500.0,
              "ScanningSequence": ["SE", "IR"]}
IDENTIFYING_STRINGS = [part for value in FAKE_IDENTIFIERS.values() for part in value.split("^")]


def _volume(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Integer-valued ellipsoid with noise: DICOM stores it exactly as uint16."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = sum(axis**2 for axis in grid) < 0.7
    return np.rint(800 * inside + rng.uniform(20, 120, shape)).astype(np.float64)


def _dwi_volume(seed: int) -> np.ndarray:
    s0 = _volume(seed) + 100
    return np.rint(np.stack([s0 * np.exp(-b * 8e-4) for b in BVALS], axis=-1))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """One subject with T1w, CE-T1 (two series), T2w, DWI and a localizer, converted once."""
    base = tmp_path_factory.mktemp("dicom")
    subject_dir = base / "dicom" / "P001"
    study = generate_uid()
    volumes = {"T1w": _volume(1), "ceT1w": _volume(2), "T2w": _volume(3), "dwi": _dwi_volume(4)}
    write_series_from_volume(volumes["T1w"], AXIAL, subject_dir / "a" / "b",
                             series_description="T1 MPRAGE pre", series_number=3,
                             study_uid=study)
    write_series_from_volume(volumes["ceT1w"], AXIAL, subject_dir / "c",
                             series_description="T1 MPRAGE POST GAD", series_number=9,
                             study_uid=study)
    write_series_from_volume(_volume(5, (12, 14, 4)), AXIAL, subject_dir / "c2",
                             series_description="T1 +C thick slices", series_number=10,
                             study_uid=study)
    write_series_from_volume(volumes["T2w"], FLIPPED_X, subject_dir / "t2",
                             series_description="Ax T2 FSE", series_number=4, study_uid=study,
                             tags=T2_TAGS)
    write_series_from_volume(volumes["dwi"], AXIAL, subject_dir / "dwi",
                             series_description="DWI 0 500 1000", series_number=5,
                             study_uid=study, b_values=BVALS, b_vectors=DIRECTIONS)
    write_series_from_volume(_volume(6, (12, 14, 3)), AXIAL, subject_dir / "loc",
                             series_description="3-plane localizer", series_number=1,
                             study_uid=study)
    before = tree_fingerprint(subject_dir)
    bids_dir = base / "bids"
    result = convert_dicom_subject(subject_dir, bids_dir, "P001", work_dir=base)
    return {"result": result, "bids": bids_dir, "volumes": volumes, "source": subject_dir,
            "before": before, "base": base}


def test_outputs_have_spec_names(converted):
    bids = converted["bids"]
    expected = {
        "T1w": bids / "sub-P001/anat/sub-P001_T1w.nii.gz",
        "ceT1w": bids / "sub-P001/anat/sub-P001_ce-gadolinium_T1w.nii.gz",
        "T2w": bids / "sub-P001/anat/sub-P001_T2w.nii.gz",
        "dwi": bids / "sub-P001/dwi/sub-P001_dwi.nii.gz",
    }
    assert converted["result"]["modalities"] == expected
    for path in expected.values():
        assert path.is_file()
        assert path.with_name(path.name.replace(".nii.gz", ".json")).is_file()
    names = sorted(p.name for p in bids.rglob("*") if p.is_file())
    assert names == [".cesynth-dicom-source.json",  # the studies' digest (another patient)
                     "dataset_description.json", "sub-P001_T1w.json", "sub-P001_T1w.nii.gz",
                     "sub-P001_T2w.json", "sub-P001_T2w.nii.gz",
                     "sub-P001_ce-gadolinium_T1w.json", "sub-P001_ce-gadolinium_T1w.nii.gz",
                     "sub-P001_dwi.bval", "sub-P001_dwi.bvec", "sub-P001_dwi.json",
                     "sub-P001_dwi.nii.gz", "sub-P001_series.tsv"]  # the roles and why


@pytest.mark.parametrize("modality, affine", [("T1w", AXIAL), ("ceT1w", AXIAL),
                                              ("T2w", FLIPPED_X), ("dwi", AXIAL)])
def test_images_match_source_values_and_world_orientation(converted, modality, affine):
    out = nib.as_closest_canonical(nib.load(str(converted["result"]["modalities"][modality])))
    source = nib.as_closest_canonical(nib.Nifti1Image(converted["volumes"][modality], affine))
    assert out.shape == source.shape
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-3)
    np.testing.assert_array_equal(out.get_fdata(), source.get_fdata())


def test_ce_series_is_not_taken_as_t1w(converted):
    sidecars = {p.name: json.loads(p.read_text()) for p in converted["bids"].rglob("*.json")}
    assert sidecars["sub-P001_T1w.json"]["SeriesDescription"] == "T1 MPRAGE pre"
    assert sidecars["sub-P001_ce-gadolinium_T1w.json"]["SeriesDescription"] == (
        "T1 MPRAGE POST GAD")


def test_duplicate_series_keeps_most_slices_and_reports(converted):
    assert converted["result"]["duplicates"] == {"ceT1w": ["T1 +C thick slices"]}


def test_unmatched_series_are_reported(converted):
    assert converted["result"]["unmatched"] == ["3-plane localizer"]


def test_bval_bvec_are_recovered(converted):
    dwi_dir = converted["bids"] / "sub-P001" / "dwi"
    bvals = np.loadtxt(dwi_dir / "sub-P001_dwi.bval")
    bvecs = np.loadtxt(dwi_dir / "sub-P001_dwi.bvec")
    np.testing.assert_array_equal(bvals, BVALS)
    assert bvecs.shape == (3, 7)
    # axis-aligned source directions come back as the same axes (signs follow FSL's frame)
    np.testing.assert_allclose(np.abs(bvecs.T), DIRECTIONS, atol=1e-4)


def test_no_identifying_string_reaches_any_output(converted):
    for path in converted["bids"].rglob("*"):
        if not path.is_file():
            continue
        content = path.read_bytes()
        if path.name.endswith(".gz"):
            content = gzip.decompress(content)
        for secret in IDENTIFYING_STRINGS:
            assert secret.encode() not in content, f"{secret} found in {path.name}"


def test_sidecars_keep_acquisition_parameters(converted):
    sidecar = json.loads((converted["bids"] / "sub-P001/anat/sub-P001_T1w.json").read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(0.008)
    assert sidecar["FlipAngle"] == 12
    assert "PatientName" not in sidecar and "InstitutionName" not in sidecar


def test_source_folder_is_unchanged(converted):
    assert tree_fingerprint(converted["source"]) == converted["before"]


def test_no_temporary_folder_is_left(converted):
    assert not list(converted["base"].glob("cesynth-dcm2niix-*"))


def test_converted_subject_passes_discovery_and_validation(converted):
    (scan,) = discover_bids(converted["bids"])
    assert scan.scan_id == "P001" and scan.set == "A"
    report = validate_scan(scan)
    assert report["status"] == "included"
    assert report["b_values"] == [0, 500, 1000]
    assert report["dwi_volumes"] == 7


def test_missing_t1w_is_an_error_naming_the_series(tmp_path):
    subject_dir = tmp_path / "dicom" / "P002"
    study = generate_uid()
    write_series_from_volume(_volume(1), AXIAL, subject_dir / "s4",
                             series_description="Ax T2 FSE", series_number=4, study_uid=study,
                             tags=T2_TAGS)
    write_series_from_volume(_volume(2), AXIAL, subject_dir / "s7",
                             series_description="FLAIR", series_number=7, study_uid=study,
                             tags=FLAIR_TAGS)
    with pytest.raises(InputError) as caught:
        convert_dicom_subject(subject_dir, tmp_path / "bids", "P002")
    assert str(caught.value) == (
        "sub-P002: no pre-contrast T1 series (series: 4 (Ax T2 FSE, 10:15:20): T2; "
        "7 (FLAIR, 10:15:20): FLAIR); pin one with --series T1w=<SeriesNumber> or config "
        "ingest.dicom_series: {P002: {T1w: <SeriesNumber>}}")
    assert not (tmp_path / "bids" / "sub-P002").exists()


def test_custom_patterns_and_unmatched_series(tmp_path):
    subject_dir = tmp_path / "dicom" / "P003"
    study = generate_uid()
    write_series_from_volume(_volume(1), AXIAL, subject_dir / "x",
                             series_description="BRAVO", series_number=2, study_uid=study)
    write_series_from_volume(_volume(2), AXIAL, subject_dir / "y",
                             series_description="SWAN", series_number=8, study_uid=study)
    result = convert_dicom_subject(subject_dir, tmp_path / "bids", "P003",
                                   patterns={"T1w": r"bravo"})
    assert set(result["modalities"]) == {"T1w"}
    assert result["unmatched"] == ["SWAN"]


def test_non_alphanumeric_label_is_rejected(tmp_path):
    with pytest.raises(InputError, match="not alphanumeric"):
        convert_dicom_subject(tmp_path, tmp_path / "bids", "P_01")


def test_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "P004").mkdir()
    (tmp_path / "P004" / "notes.txt").write_text("not a DICOM file")
    with pytest.raises(InputError) as caught:
        convert_dicom_subject(tmp_path / "P004", tmp_path / "bids", "P004")
    assert caught.value.who == "sub-P004"


def test_scrub_sidecar_drops_dates_and_names():
    scrubbed = scrub_sidecar({"PatientName": "x", "AcquisitionDateTime": "y", "StudyDate": "z",
                              "EchoTime": 0.1, "PatientPosition": "HFS"})
    assert scrubbed == {"EchoTime": 0.1, "PatientPosition": "HFS"}


def test_dcm2niix_is_an_executable():
    assert Path(find_dcm2niix()).name == "dcm2niix"
    assert shutil.which(find_dcm2niix())
