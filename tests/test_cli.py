"""The `cesynth` command line as a user runs it: real files, one-line errors, exit codes."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.workflow import CESYNTH as CESYNTH_SCRIPT

from cesynth import ants_transforms, cli
from cesynth.io import read_tsv

CESYNTH = [CESYNTH_SCRIPT]


def cesynth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CESYNTH, *map(str, args)], capture_output=True, text=True, timeout=600)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "bids"
    result = cesynth("phantom", "--out", out, "--subjects", 2, "--seed", 3, "--set-b", 1,
                     "--voxel-mm", 4)
    assert result.returncode == 0, result.stderr
    return out


def test_phantom_writes_a_bids_dataset(cohort):
    assert (cohort / "dataset_description.json").is_file()
    participants = read_tsv(cohort / "participants.tsv")
    assert participants["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert participants["set"].tolist() == ["A", "B"]
    assert (cohort / "derivatives/tumor_masks/sub-02/anat/sub-02_desc-tumor_mask.nii.gz").is_file()


def test_phantom_refuses_to_write_into_a_real_dataset(tmp_path):
    real = tmp_path / "hospital"
    (real / "sub-01").mkdir(parents=True)
    (real / "dataset_description.json").write_text('{"Name": "hospital", "BIDSVersion": "1.9"}')
    before = tree_digest(real)
    result = cesynth("phantom", "--out", real, "--subjects", 1)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(real) == before


def test_validate_accepts_the_phantom_and_names_a_bad_file(cohort, tmp_path):
    assert cesynth("validate", "--bids", cohort).returncode == 0
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(cohort), str(broken)], check=True)
    bval = broken / "sub-01/dwi/sub-01_dwi.bval"
    bval.write_text(" ".join(bval.read_text().split()[:-1]) + "\n")
    result = cesynth("validate", "--bids", broken, "--out", tmp_path / "ingest.tsv")
    assert result.returncode == 1
    assert "error: sub-01: sub-01_dwi.bval: 6 b-values for 7 volumes" in result.stderr
    table = read_tsv(tmp_path / "ingest.tsv")
    assert table.set_index("scan_id").loc["01", "status"] == "excluded"
    assert table.set_index("scan_id").loc["02", "status"] == "included"


def test_adc_fits_the_phantom_dwi(cohort, tmp_path):
    dwi = cohort / "sub-01/dwi/sub-01_dwi"
    out = tmp_path / "adc.nii.gz"
    result = cesynth("adc", "--dwi", f"{dwi}.nii.gz", "--bval", f"{dwi}.bval",
                     "--bvec", f"{dwi}.bvec", "--out", out)
    assert result.returncode == 0, result.stderr
    adc = nib.load(out)
    assert adc.get_data_dtype() == np.float32
    assert adc.shape == nib.load(f"{dwi}.nii.gz").shape[:3]
    true_adc = nib.load(cohort / "derivatives/phantom/sub-01/sub-01_desc-trueadc_adc.nii.gz")
    inside = np.asarray(true_adc.dataobj) > 0
    fitted = np.asarray(adc.dataobj)[inside]
    assert np.median(np.abs(fitted - np.asarray(true_adc.dataobj)[inside])) < 1e-4


def test_adc_without_b0_is_one_line_and_leaves_nothing(cohort, tmp_path):
    """b = 0 plus any other shell is fitted (ingest.required_b_values: [0]); without b = 0 the
    DWI cannot be fitted."""
    dwi = cohort / "sub-01/dwi/sub-01_dwi"
    bval = tmp_path / "bad.bval"
    bval.write_text("500 500 500 1000 1000 1000 1000\n")
    out = tmp_path / "adc.nii.gz"
    result = cesynth("adc", "--dwi", f"{dwi}.nii.gz", "--bval", bval, "--bvec", f"{dwi}.bvec",
                     "--out", out)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bval}")
    assert not out.exists() and list(tmp_path.iterdir()) == [bval]


def test_register_reports_mutual_information(cohort, tmp_path):
    anat = cohort / "sub-01/anat"
    out, xfm = tmp_path / "t1_on_ce.nii.gz", tmp_path / "xfm.mat"
    result = cesynth("register", "--fixed", anat / "sub-01_ce-gadolinium_T1w.nii.gz",
                     "--moving", anat / "sub-01_T1w.nii.gz", "--out", out, "--xfm", xfm)
    assert result.returncode == 0, result.stderr
    assert '"mi_after"' in result.stdout and xfm.is_file()
    assert nib.load(out).shape == nib.load(anat / "sub-01_ce-gadolinium_T1w.nii.gz").shape


def test_register_again_gives_the_same_transform(cohort, tmp_path):
    anat = cohort / "sub-01/anat"
    transforms = []
    for run in ("first", "second"):
        xfm = tmp_path / f"{run}.mat"
        result = cesynth("register", "--fixed", anat / "sub-01_ce-gadolinium_T1w.nii.gz",
                         "--moving", anat / "sub-01_T2w.nii.gz", "--out",
                         tmp_path / f"{run}.nii.gz", "--xfm", xfm, "--seed", "0")
        assert result.returncode == 0, result.stderr
        transforms.append(ants_transforms.read_ants_transform(xfm).parameters)
    np.testing.assert_array_equal(transforms[0], transforms[1])


def test_register_missing_moving_file_is_one_line(cohort, tmp_path):
    anat = cohort / "sub-01/anat"
    result = cesynth("register", "--fixed", anat / "sub-01_ce-gadolinium_T1w.nii.gz",
                     "--moving", tmp_path / "nope.nii.gz", "--out", tmp_path / "o.nii.gz",
                     "--xfm", tmp_path / "x.mat")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.nii.gz'}: file not found"


def test_brainmask_unknown_method_is_refused_by_the_parser(tmp_path):
    result = cesynth("brainmask", "--image", tmp_path / "x.nii.gz", "--out", tmp_path / "m.nii.gz",
                     "--method", "magic")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: cesynth brainmask: argument --method")


def write_volume(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


@pytest.fixture()
def metric_files(tmp_path) -> dict[str, Path]:
    target = np.full((24, 20, 3), 0.5)
    pred = target + 0.1
    brain = np.zeros(target.shape)
    brain[4:20, 4:16] = 1
    tumor = np.zeros(target.shape)
    tumor[8:12, 8:12, 1] = 1
    return {name: write_volume(tmp_path / f"{name}.nii.gz", data)
            for name, data in [("pred", pred), ("target", target), ("brain", brain),
                               ("tumor", tumor)]}


def test_metrics_prints_json_for_brain_and_tumor(metric_files):
    f = metric_files
    result = cesynth("metrics", "--pred", f["pred"], "--target", f["target"], "--mask", f["brain"],
                     "--tumor-mask", f["tumor"])
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"brain", "tumor", "files"}
    assert set(metrics["brain"]) == {"mae", "psnr", "ssim", "voxels"}
    assert metrics["brain"]["voxels"] == 16 * 12 * 3 and metrics["tumor"]["voxels"] == 16
    assert metrics["tumor"]["psnr"] == pytest.approx(20.0, abs=1e-4)  # error 0.1 everywhere
    assert 0 < metrics["brain"]["ssim"] < 1
    assert metrics["files"]["tumor_mask"] == "tumor.nii.gz"


def test_metrics_without_tumor_mask_in_process(metric_files, capsys):
    f = metric_files
    code = cli.main(["metrics", "--pred", str(f["pred"]), "--target", str(f["target"]),
                     "--mask", str(f["brain"])])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"brain", "files"}
    assert metrics["brain"]["mae"] == pytest.approx(0.1, abs=1e-6)


def test_metrics_grid_mismatch_and_missing_file_are_one_line(metric_files, tmp_path, capsys):
    f = metric_files
    other = write_volume(tmp_path / "other.nii.gz", np.ones((24, 20, 4)))
    code = cli.main(["metrics", "--pred", str(f["pred"]), "--target", str(f["target"]),
                     "--mask", str(other)])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {other}: ")
    assert "(24, 20, 4)" in lines[0] and "(24, 20, 3)" in lines[0]
    missing = tmp_path / "missing.nii.gz"
    code = cli.main(["metrics", "--pred", str(missing), "--target", str(f["target"]),
                     "--mask", str(f["brain"])])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.strip() == f"error: {missing}: file not found"
