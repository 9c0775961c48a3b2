"""`cesynth predict` with DICOM: series folders as inputs, a synthetic DICOM series as output.

Real files: a one-subject 4 mm phantom written as classic DICOM series (with fake identifiers in
every free-text field), converted by the real dcm2niix, a tiny trained model, real ANTs
registrations; the output series is read back with pydicom and with dcm2niix.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers.checkpoints import trained_checkpoint
from helpers.dicom_writer import FAKE_IDENTIFIERS, write_series_from_volume
from helpers.vendor_study import VENDOR_ADC, write_vendor_adc
from helpers.workflow import CESYNTH
from pydicom.uid import generate_uid

from cesynth import brainmask, dicom, phantom, synthetic_dicom
from cesynth.io import InputError, save_nifti
from cesynth.predict import predict_patient
from cesynth.preprocessing import preprocessing_record


def _dcm2niix_available() -> bool:
    try:
        dicom.find_dcm2niix()
    except InputError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _dcm2niix_available(), reason="dcm2niix not installed")

GRID = (32, 40, 32)
PREPROCESSING = preprocessing_record(
    {"model_grid": list(GRID), "normalise": "histeq",
     "brainmask": (brainmask.available_methods() or ["deepbet"])[0],
     "brainmask_reference": "T1w", "registration": {"seed": 0}},
    modalities=["T1w", "T2w", "adc"])
SETTINGS = {
    "model": "hrfcn3d", "width_multiplier": 1 / 16, "blocks_per_module": 1,
    "stages": [[1, 1.0, 1.0, 1.0, 3e-3]], "patches_per_subject": 3,
    "checkpoint_every_steps": 0, "seed": 5, "device": "cpu",
}
SECRETS = [part for value in FAKE_IDENTIFIERS.values() for part in value.split("^")]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def canonical(path: Path) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.load(str(path)))


def cesynth(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([CESYNTH, *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("training"), SETTINGS, PREPROCESSING)


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> dict:
    """One phantom patient as integer NIfTI files and as DICOM series of the same values."""
    root = tmp_path_factory.mktemp("patient")
    cohort = root / "bids"
    phantom.make_cohort(cohort, 1, seed=3, settings=phantom.PhantomSettings(voxel_mm=4.0))
    anat, dwi_dir = cohort / "sub-01" / "anat", cohort / "sub-01" / "dwi"
    images = {"t1": anat / "sub-01_T1w.nii.gz", "t2": anat / "sub-01_T2w.nii.gz",
              "dwi": dwi_dir / "sub-01_dwi.nii.gz"}
    bvals = np.loadtxt(dwi_dir / "sub-01_dwi.bval")
    bvecs = np.loadtxt(dwi_dir / "sub-01_dwi.bvec").T
    study = generate_uid()
    nifti, series = {}, {}
    for number, (name, path) in enumerate(images.items(), start=3):
        img = nib.load(str(path))
        values = img.get_fdata()
        values = np.rint(values / values.max() * 3000)  # DICOM stores integers exactly
        nifti[name] = save_nifti(values, img.affine, root / "nifti" / f"{name}.nii.gz",
                                 dtype=np.float32)
        series[name] = root / "dicom" / name
        diffusion = {"b_values": bvals, "b_vectors": bvecs} if name == "dwi" else {}
        write_series_from_volume(values, img.affine, series[name],
                                 series_description=f"{name} series", series_number=number,
                                 study_uid=study, **diffusion)
    for kind in ("bval", "bvec"):
        nifti[kind] = dwi_dir / f"sub-01_dwi.{kind}"
    true_adc = cohort / phantom.truth_files("sub-01")["true_adc"]
    return {"nifti": nifti, "dicom": series, "root": root, "before": digest(root / "dicom"),
            "true_adc": true_adc}


@pytest.fixture(scope="module")
def from_dicom(patient, checkpoint) -> dict:
    """The CLI run a user would make: DICOM series in, NIfTI and a DICOM series out."""
    out = patient["root"] / "out_dicom"
    series = patient["dicom"]
    result = cesynth("predict", "--t1", series["t1"], "--t2", series["t2"], "--dwi",
                     series["dwi"], "--model", checkpoint, "--out", out / "synthetic.nii.gz",
                     "--out-dicom", out / "series")
    assert result.returncode == 0, result.stderr
    return {"out": out, "summary": json.loads(result.stdout), "stderr": result.stderr}


@pytest.fixture(scope="module")
def from_nifti(patient, checkpoint) -> Path:
    files, out = patient["nifti"], patient["root"] / "out_nifti" / "synthetic.nii.gz"
    predict_patient(files["t1"], files["t2"], dwi=files["dwi"], bval=files["bval"],
                    bvec=files["bvec"], model=checkpoint, out=out)
    return out


def test_dicom_inputs_give_the_prediction_of_the_same_nifti_inputs(from_dicom, from_nifti):
    dicom_img, nifti_img = canonical(from_dicom["out"] / "synthetic.nii.gz"), canonical(from_nifti)
    assert dicom_img.shape == nifti_img.shape
    np.testing.assert_allclose(dicom_img.affine, nifti_img.affine, atol=1e-3)
    a, b = dicom_img.get_fdata(), nifti_img.get_fdata()
    brain = (a > 0) | (b > 0)
    assert brain.sum() > 1000
    assert np.corrcoef(a[brain], b[brain])[0, 1] > 0.99
    assert np.abs(a - b).mean() < 0.01


def test_the_sidecar_says_which_inputs_were_dicom(from_dicom):
    sidecar = json.loads((from_dicom["out"] / "synthetic.json").read_text())
    assert sidecar["SourceFormat"] == {"t1": "DICOM series", "t2": "DICOM series",
                                       "dwi": "DICOM series"}
    assert sidecar["InputModalities"] == ["T1w", "T2w", "adc"]
    assert "fitted from the DWI" in sidecar["Preprocessing"]["ADC"]  # gradients from the series
    assert from_dicom["summary"]["output_dicom"] == str(from_dicom["out"] / "series")


def test_the_output_series_is_marked_synthetic_and_carries_no_identity(from_dicom):
    files = sorted((from_dicom["out"] / "series").iterdir())
    nifti = nib.load(str(from_dicom["out"] / "synthetic.nii.gz"))
    assert len(files) == nifti.shape[2]
    uids = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
        assert ds.SeriesDescription.startswith("SYNTHETIC")
        assert "no gadolinium was given" in ds.DerivationDescription
        assert str(ds.PatientName) == "" and ds.PatientID == "" and ds.PatientBirthDate == ""
        uids.add((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID))
    assert len(uids) == 1  # one series
    for path in from_dicom["out"].rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            content = gzip.decompress(content) if path.name.endswith(".gz") else content
            for secret in SECRETS:
                assert secret.encode() not in content, (secret, path.name)


def test_the_output_series_reads_back_as_the_nifti_output(from_dicom, tmp_path):
    back = dicom.convert_series(from_dicom["out"] / "series", tmp_path / "back")["image"]
    read, written = canonical(back), canonical(from_dicom["out"] / "synthetic.nii.gz")
    assert read.shape == written.shape
    np.testing.assert_allclose(read.affine, written.affine, atol=1e-3)
    # dcm2niix keeps the stored integers and the rescale slope
    values = read.get_fdata()
    np.testing.assert_allclose(values, written.get_fdata(), atol=0.6 / synthetic_dicom.STORED_MAX)


def test_the_dicom_inputs_are_only_read(from_dicom, patient):
    assert digest(patient["root"] / "dicom") == patient["before"]


@pytest.mark.parametrize("vendor", sorted(VENDOR_ADC))
def test_a_vendor_adc_series_reaches_the_model_in_mm2_per_s(patient, checkpoint, tmp_path,
                                                            vendor):
    """Issue 24: `cesynth predict --adc <the scanner's ADC series>` for each vendor convention
    (Philips: display scaling, not dcm2niix's precise float) gives the model the map in mm2/s."""
    truth = nib.load(str(patient["true_adc"]))
    series = write_vendor_adc(truth.get_fdata(), truth.affine, tmp_path / "adc_series", vendor)
    work, out = tmp_path / "work", tmp_path / "out" / "synthetic.nii.gz"
    result = cesynth("predict", "--t1", patient["nifti"]["t1"], "--adc", series,
                     "--model", checkpoint, "--out", out, "--keep-work", work)
    assert result.returncode == 0, result.stderr
    # the map as read: the scanner's values to within its storage step, in mm2/s
    step = VENDOR_ADC[vendor].rescale_slope * 1e-6
    np.testing.assert_allclose(canonical(work / "adc_mm2s.nii.gz").get_fdata(),
                               canonical(patient["true_adc"]).get_fdata(), atol=0.51 * step)
    # the map the model was given (on the T1 grid): brain tissue ADC
    received = nib.load(str(work / "adc_space-T1w.nii.gz")).get_fdata()
    brain = nib.load(str(work / "T1w_desc-brain_mask.nii.gz")).get_fdata() > 0
    assert 0.5e-3 < np.median(received[brain & (received > 0)]) < 3.5e-3
    sidecar = json.loads(out.with_name("synthetic.json").read_text())
    assert sidecar["SourceFormat"]["adc"] == "DICOM series"
    assert sidecar["Preprocessing"]["ADC"] == ("given ADC map (1e-6 mm2/s, x 1e-06 to mm2/s), "
                                               "registered to the T1")


def test_a_folder_with_two_series_is_one_line(patient, checkpoint, tmp_path):
    mixed = tmp_path / "mixed"
    for name in ("t1", "t2"):
        for path in patient["dicom"][name].iterdir():
            (mixed / name).mkdir(parents=True, exist_ok=True)
            (mixed / name / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out.nii.gz"
    result = cesynth("predict", "--t1", mixed, "--model", checkpoint, "--out", out)
    assert result.returncode != 0
    assert result.stderr.startswith(f"error: {mixed}: holds 2 DICOM series")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("*.json"))


def test_outputs_are_checked_before_any_work(patient, checkpoint, tmp_path):
    series = patient["dicom"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.dcm").write_bytes(b"x")
    result = cesynth("predict", "--t1", series["t1"], "--model", checkpoint,
                     "--out", tmp_path / "a.nii.gz", "--out-dicom", busy)
    assert result.returncode != 0
    assert result.stderr == f"error: {busy}: DICOM output folder is not empty\n"
    inside = series["t1"] / "synthetic.nii.gz"
    result = cesynth("predict", "--t1", series["t1"], "--model", checkpoint, "--out", inside)
    assert result.returncode != 0 and "output would overwrite an input" in result.stderr
    assert not inside.exists()
    assert digest(patient["root"] / "dicom") == patient["before"]


def test_the_series_can_be_filed_with_the_t1_study(patient, checkpoint, tmp_path):
    series = patient["dicom"]
    out = tmp_path / "synthetic.nii.gz"
    predict_patient(series["t1"], model=checkpoint, out=out, out_dicom=tmp_path / "series",
                    dicom_study_from_t1=True)
    t1 = pydicom.dcmread(next(p for p in sorted(series["t1"].iterdir())))
    written = [pydicom.dcmread(p) for p in sorted((tmp_path / "series").iterdir())]
    for ds in written:
        for keyword in synthetic_dicom.STUDY_KEYWORDS:
            assert str(ds.get(keyword)) == str(t1.get(keyword, "")), keyword
        assert ds.SeriesInstanceUID != t1.SeriesInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
    assert str(written[0].PatientName) == FAKE_IDENTIFIERS["PatientName"]
    sidecar = json.loads(out.with_name("synthetic.json").read_text())
    assert sidecar["DICOMFiledWithT1Study"] is True
    for path in (out, out.with_name("synthetic.json")):  # identifiers in the DICOM files only
        content = path.read_bytes()
        content = gzip.decompress(content) if path.name.endswith(".gz") else content
        for secret in SECRETS:
            assert secret.encode() not in content, (secret, path.name)


def test_filing_with_the_study_needs_a_dicom_t1_and_a_dicom_output(patient, checkpoint,
                                                                    tmp_path):
    with pytest.raises(InputError, match="needs the T1 as a DICOM series folder"):
        predict_patient(patient["nifti"]["t1"], model=checkpoint, out=tmp_path / "a.nii.gz",
                        out_dicom=tmp_path / "series", dicom_study_from_t1=True)
    with pytest.raises(InputError, match="needs --out-dicom"):
        predict_patient(patient["dicom"]["t1"], model=checkpoint, out=tmp_path / "a.nii.gz",
                        dicom_study_from_t1=True)
    assert not list(tmp_path.iterdir())
