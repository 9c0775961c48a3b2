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
        "sub-P002: no pre-contrast T1 series (series: 4 (Ax T2 FSE): T2; "
        "7 (FLAIR): FLAIR); pin one with --series T1w=<SeriesNumber> or config "
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


# ----------------------------------------------------------------- clinical exports (issue 24)

from helpers.vendor_study import (  # noqa: E402
    EPI_DWI,
    GRE_3D_T1,
    ISO_3D,
    PHILIPS_ADC_DISPLAY_MEDIAN,
    SE_T1,
    TSE_T2,
    VENDOR_ADC,
    Series,
    philips_study,
    write_study,
)
from helpers.workflow import CESYNTH  # noqa: E402

from cesynth import adc_maps, dicom, dicom_roles  # noqa: E402
from cesynth.dicom import RoleOptions  # noqa: E402


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def _table(path: Path) -> dict[str, dict[str, str]]:
    import pandas as pd

    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return {row["series_number"]: row for row in table.to_dict("records")}


@pytest.fixture(scope="module")
def philips(tmp_path_factory) -> dict:
    """The FIELD-NOTES Philips export (13 series, no contrast tag), converted once."""
    base = tmp_path_factory.mktemp("philips")
    philips_study(base / "dicom" / "PH1")
    result = convert_dicom_subject(base / "dicom" / "PH1", base / "bids", "PH1", work_dir=base)
    return {"result": result, "bids": base / "bids", "base": base}


def test_philips_export_gets_the_roles_from_tags_and_order(philips):
    files = philips["result"]["modalities"]
    numbers = {modality: _sidecar(path)["SeriesNumber"] for modality, path in files.items()}
    # the 3D post-contrast T1 has no contrast word; the T1 SE and FLAIR repeats bracket the
    # injection; FLAIR (T2W_FLAIR_TRA) is not the T2w; trace, ADC and registered DWI not the DWI
    assert numbers == {"T1w": 201, "ceT1w": 801, "T2w": 301, "FLAIR": 401, "dwi": 501}
    assert files["FLAIR"].name == "sub-PH1_FLAIR.nii.gz"
    assert philips["result"]["roles"] == {"T1w": 201, "ceT1w": 801, "T2w": 301, "FLAIR": 401,
                                          "DWI": 501}


def test_philips_series_table_records_every_choice(philips):
    path = philips["result"]["series_table"]
    assert path == philips["bids"] / "derivatives/cesynth-dicom/sub-PH1_series.tsv"
    rows = _table(path)
    assert list(rows) == ["101", "201", "301", "401", "501", "502", "503", "504", "601", "701",
                          "801", "901", "1001"]  # acquisition order
    assert rows["101"]["acquired_after_first"] == "+00:00:00"  # no time of day is kept
    assert rows["201"]["acquired_after_first"] == "+00:02:00"
    assert rows["801"]["role"] == "ceT1w" and rows["801"]["contrast"] == "post"
    assert "acquired after the injection" in rows["801"]["signals"]
    assert rows["1001"]["decision"] == ("rejected as ceT1w: series 801 preferred "
                                        "(3D, ingest.dicom_prefer)")
    assert rows["901"]["decision"] == "rejected as FLAIR: series 401 preferred (pre-contrast)"
    assert rows["401"]["weighting"] == "FLAIR" and "TI 2800" in rows["401"]["signals"]
    assert {rows[n]["kind"] for n in ("503", "504")} == {"derived"}
    assert "TRACEW" in rows["504"]["signals"]
    assert rows["502"]["kind"] == "ADC"
    assert rows["502"]["decision"] == "not used: the ADC is fitted from the chosen DWI"
    assert {rows[n]["kind"] for n in ("101", "601", "701")} == {"other"}
    assert rows["501"]["b_values"] == "0/1000"
    content = path.read_text()
    for secret in IDENTIFYING_STRINGS:
        assert secret not in content


def test_philips_summary_is_one_line(philips):
    summary = philips["result"]["summary"]
    assert summary.startswith("sub-PH1: T1w=201 ceT1w=801 T2w=301 FLAIR=401 DWI=501 (b=0/1000)")
    assert "\n" not in summary and "repeated protocols" in summary


def test_philips_two_shell_dwi_passes_validation(philips):
    (scan,) = discover_bids(philips["bids"])
    report = validate_scan(scan)
    assert report["status"] == "included", report
    assert report["b_values"] == [0, 1000]


def _t1_pair(pre: dict, post: dict, *, pre_time="100000", post_time="102000",
             numbers=(3, 9), description="AX T1") -> list[Series]:
    return [Series(numbers[0], description, pre_time, pre, seed=1),
            Series(4, "AX T2", "101000", TSE_T2, seed=2),
            Series(numbers[1], description, post_time, post, seed=3,
                   affine=ISO_3D if post.get("MRAcquisitionType") == "3D" else AXIAL,
                   shape=(14, 16, 14) if post.get("MRAcquisitionType") == "3D" else SHAPE)]


def _roles(folder: Path, subject: str = "X", **options) -> dicom_roles.Assignment:
    return dicom_roles.assign_roles(dicom_roles.read_series(folder), subject,
                                    dicom_roles.DEFAULT_SERIES_PATTERNS, **options)


def test_same_description_told_apart_by_contrast_bolus_agent(tmp_path):
    # different protocols (no repeat), no contrast word: only the tag tells; the post-contrast
    # series is even acquired first
    series = _t1_pair(SE_T1, GRE_3D_T1 | {"ContrastBolusAgent": "Gadovist"},
                      pre_time="102000", post_time="100000")
    write_study(tmp_path / "X", series)
    chosen = _roles(tmp_path / "X").chosen
    assert (chosen["T1w"].number, chosen["ceT1w"].number) == (3, 9)
    rows = {r["series_number"]: r for r in dicom_roles.series_table(_roles(tmp_path / "X"))}
    assert "ContrastBolusAgent 'Gadovist'" in rows["9"]["signals"]


@pytest.mark.parametrize("numbers", [(3, 9), (9, 3)])
def test_same_description_told_apart_by_acquisition_time_alone(tmp_path, numbers):
    # one protocol acquired twice: the later acquisition is post, whatever the numbering
    write_study(tmp_path / "X", _t1_pair(SE_T1, SE_T1, numbers=numbers))
    chosen = _roles(tmp_path / "X").chosen
    assert (chosen["T1w"].number, chosen["ceT1w"].number) == numbers


def test_injection_after_the_last_first_acquisition_of_any_repeat(tmp_path):
    # T1 SE 10:00 and 10:30, FLAIR-free T2 repeat 10:05 and 10:25: the 3D T1 at 10:15 is post,
    # a 3D T1 at 10:03 (before the T2's first acquisition) is pre
    series = [Series(2, "T1", "100000", SE_T1, seed=1), Series(3, "3D T1", "100300", GRE_3D_T1,
                                                              affine=ISO_3D, seed=2),
              Series(4, "T2", "100500", TSE_T2, seed=3),
              Series(5, "3D T1", "101500", GRE_3D_T1, affine=ISO_3D, seed=4,
                     shape=(12, 14, 12)),
              Series(6, "T2", "102500", TSE_T2, seed=5), Series(7, "T1", "103000", SE_T1, seed=6)]
    write_study(tmp_path / "X", series)
    chosen = _roles(tmp_path / "X").chosen
    assert (chosen["T1w"].number, chosen["ceT1w"].number, chosen["T2w"].number) == (3, 5, 4)
    chosen_2d = _roles(tmp_path / "X", prefer="2d").chosen
    assert (chosen_2d["T1w"].number, chosen_2d["ceT1w"].number) == (2, 7)


def test_two_plausible_ce_t1_stop_the_subject_with_one_line(tmp_path):
    sagittal = np.array([[0, 0, 1.5, -12], [1.5, 0, 0, -14], [0, 1.5, 0, -12], [0, 0, 0, 1]])
    series = _t1_pair(SE_T1, SE_T1) + [
        Series(5, "3D T1 AX", "101200", GRE_3D_T1, affine=ISO_3D, shape=(14, 14, 14), seed=5),
        Series(6, "3D T1 SAG", "101400", GRE_3D_T1, affine=sagittal, shape=(14, 14, 14), seed=6)]
    write_study(tmp_path / "dicom" / "X", series)
    with pytest.raises(InputError) as caught:
        convert_dicom_subject(tmp_path / "dicom" / "X", tmp_path / "bids", "X")
    message = str(caught.value)
    assert message.startswith("sub-X: 2 plausible ceT1w series: 5 (3D T1 AX), "
                              "6 (3D T1 SAG)")
    assert "--series ceT1w=<SeriesNumber>" in message and "ingest.dicom_series" in message
    assert "\n" not in message
    assert not (tmp_path / "bids" / "sub-X").exists()
    result = convert_dicom_subject(tmp_path / "dicom" / "X", tmp_path / "bids", "X",
                                   options=RoleOptions(overrides={"X": {"ceT1w": 6}}))
    assert result["roles"]["ceT1w"] == 6
    rows = _table(result["series_table"])
    assert rows["6"]["decision"].startswith("chosen as ceT1w (pinned by override)")


def test_cli_reports_the_ambiguity_and_takes_the_override(tmp_path):
    import subprocess

    series = [Series(3, "T1 SE", "100000", SE_T1, seed=1),
              Series(5, "T1 3D", "101000", GRE_3D_T1, affine=ISO_3D, shape=(14, 16, 14),
                     seed=2)]
    write_study(tmp_path / "dicom" / "X", series)
    args = [CESYNTH, "dicom2bids", "--dicom", tmp_path / "dicom", "--out", tmp_path / "bids"]
    failed = subprocess.run(list(map(str, args)), capture_output=True, text=True)
    assert failed.returncode != 0
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: sub-X: cannot tell pre- from post-contrast T1 among "
                               "series 3 (T1 SE): pre or post?, 5 (T1 3D)")
    assert not (tmp_path / "bids").exists()
    done = subprocess.run(list(map(str, [*args, "--series", "T1w=3", "--series",
                                         "X:ceT1w=5"])), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("sub-X: T1w=3 ceT1w=5;")
    assert (tmp_path / "bids/sub-X/anat/sub-X_ce-gadolinium_T1w.nii.gz").is_file()
    assert (tmp_path / "bids/derivatives/cesynth-dicom/sub-X_series.tsv").is_file()


def test_lone_t1_without_any_sign_of_contrast_is_the_pre_contrast_t1(tmp_path):
    write_study(tmp_path / "X", [Series(3, "T1 SE", "100000", SE_T1, seed=1),
                                 Series(4, "T2", "100500", TSE_T2, seed=2)])
    assignment = _roles(tmp_path / "X")
    assert set(assignment.chosen) == {"T1w", "T2w"}
    assert "no sign of contrast anywhere" in assignment.series[0].signals[-1]


def test_override_of_a_missing_series_is_one_line(tmp_path):
    write_study(tmp_path / "X", [Series(3, "T1 SE", "100000", SE_T1, seed=1)])
    with pytest.raises(InputError, match=r"^sub-X: series override ceT1w=77 matches no series$"):
        _roles(tmp_path / "X", overrides={"ceT1w": 77})
    with pytest.raises(InputError, match="unknown role 'T1'"):
        _roles(tmp_path / "X", overrides={"T1": 3})


def test_weighting_from_tags():
    def info(**tags):
        return dicom_roles.SeriesInfo(key="k", uid="k", number=1, description="", **tags)

    assert dicom_roles.weighting_from_tags(info(tr_ms=9000, te_ms=120, ti_ms=2500))[0] == "FLAIR"
    assert dicom_roles.weighting_from_tags(info(tr_ms=2000, te_ms=3, ti_ms=900))[0] == "T1"
    assert dicom_roles.weighting_from_tags(info(tr_ms=4000, te_ms=100))[0] == "T2"
    assert dicom_roles.weighting_from_tags(info(tr_ms=550, te_ms=15))[0] == "T1"
    assert dicom_roles.weighting_from_tags(info(tr_ms=3000, te_ms=15))[0] == "other"  # PD
    assert dicom_roles.weighting_from_tags(info(tr_ms=5000, te_ms=60, ti_ms=150))[0] == "other"
    assert dicom_roles.weighting_from_tags(info(tr_ms=None, te_ms=None))[0] is None


def test_flair_named_t2_is_flair_even_without_inversion_time(tmp_path):
    # no TI in the headers: the description decides, FLAIR before T2
    write_study(tmp_path / "X", [
        Series(3, "T1 SE", "100000", SE_T1, seed=1),
        Series(4, "T2W_FLAIR_TRA", "100500", {"ScanningSequence": "SE", "RepetitionTime": None,
                                              "EchoTime": None}, seed=2)])
    assignment = _roles(tmp_path / "X")
    assert set(assignment.chosen) == {"T1w", "FLAIR"}


# ----------------------------------------------------------------- vendor ADC maps


def _vendor_adc_series(tmp_path: Path, vendor: str) -> Path:
    """A scanner ADC map series (median 1.169e-3 mm2/s) as ``vendor`` stores it."""
    convention = VENDOR_ADC[vendor]
    series = Series(8, "ADC", "101100", EPI_DWI | {"RescaleSlope": convention.rescale_slope},
                    image_type=convention.image_type, private=convention.private,
                    value=convention.stored(PHILIPS_ADC_DISPLAY_MEDIAN))
    return write_study(tmp_path / "dicom", [series], manufacturer=convention.manufacturer)[8]


@pytest.mark.parametrize("vendor", sorted(VENDOR_ADC))
def test_vendor_adc_map_series_is_read_in_mm2_per_s(tmp_path, vendor):
    folder = _vendor_adc_series(tmp_path, vendor)
    image = dicom.convert_series(folder, tmp_path / "adc", display_scaling=True)["image"]
    stats = adc_maps.convert_adc_map_file(image, tmp_path / "adc_mm2s.nii.gz")
    assert stats.unit == "1e-6 mm2/s"
    assert stats.median_in_mask == pytest.approx(1.169e-3, rel=0.03)


def test_philips_precise_float_scaling_is_the_trap_display_scaling_avoids(tmp_path):
    precise = dicom.convert_series(_vendor_adc_series(tmp_path, "philips"),
                                   tmp_path / "precise")["image"]
    with pytest.raises(InputError, match="is in no known unit"):
        adc_maps.convert_adc_map_file(precise, tmp_path / "a.nii.gz")


def test_predict_converts_an_adc_series_with_display_scaling(tmp_path):
    from cesynth.predict import _converted_series

    folder = _vendor_adc_series(tmp_path, "philips")
    given = {"t1": None, "t2": None, "adc": folder, "dwi": None, "bval": None, "bvec": None}
    files = _converted_series(given, tmp_path / "work")
    stats = adc_maps.convert_adc_map_file(files["adc"], tmp_path / "adc.nii.gz")
    assert 0.7e-3 < stats.median_in_mask < 1.5e-3  # the tissue range, in mm2/s


def test_pinning_no_dwi_uses_the_scanner_adc_map_instead(tmp_path):
    philips_study(tmp_path / "dicom" / "PH3")
    result = convert_dicom_subject(tmp_path / "dicom" / "PH3", tmp_path / "bids", "PH3",
                                   options=RoleOptions(overrides={"PH3": {"DWI": "none"}}))
    assert set(result["modalities"]) == {"T1w", "ceT1w", "T2w", "FLAIR", "adc"}
    assert result["roles"]["ADC"] == 502
    rows = _table(result["series_table"])
    assert rows["502"]["decision"].startswith("chosen as ADC")
    assert rows["501"]["decision"] == "not used (DWI pinned to none by override)"
    stats = adc_maps.convert_adc_map_file(result["modalities"]["adc"], tmp_path / "adc.nii.gz")
    assert stats.median_in_mask == pytest.approx(1.169e-3, rel=0.03)


def test_study_without_dwi_gives_the_scanner_adc_map_in_its_unit(tmp_path):
    philips_study(tmp_path / "dicom" / "PH2", with_dwi=False)
    result = convert_dicom_subject(tmp_path / "dicom" / "PH2", tmp_path / "bids", "PH2")
    adc_map = result["modalities"]["adc"]
    assert adc_map == tmp_path / "bids/sub-PH2/dwi/sub-PH2_adc.nii.gz"
    stats = adc_maps.convert_adc_map_file(adc_map, tmp_path / "adc.nii.gz")
    assert stats.unit == "1e-6 mm2/s"
    assert stats.median_in_mask == pytest.approx(1.169e-3, rel=0.03)
    (scan,) = discover_bids(tmp_path / "bids")
    assert scan.adc_source == "map"
