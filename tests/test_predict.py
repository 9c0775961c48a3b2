"""Tests for `cesynth predict`: a new patient's raw scans to a synthetic CE-T1 on the T1 grid.

Real files throughout: a two-subject 4 mm phantom cohort, a tiny HR-FCN trained for one short
epoch on a 32 x 40 x 32 model grid (its checkpoint carries the preprocessing record), ANTs
registrations, the brain mask of `cesynth.brainmask` and a real SQLite MLflow store. The
expensive predictions run once per module and are shared by the tests that inspect them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.checkpoints import cached_training_subject, stretch_output, trained_checkpoint
from helpers.workflow import CESYNTH
from scipy import ndimage

from cesynth import __version__, brainmask, cli, phantom, registration, tracking
from cesynth.inference import load_generator
from cesynth.io import InputError, is_synthetic, save_nifti
from cesynth.normalise import ModelGrid
from cesynth.predict import predict_patient, sidecar_path
from cesynth.predict_inputs import check_cascade_files, resolve_preprocessing
from cesynth.predict_synthesis import to_native_grid
from cesynth.preprocessing import preprocessing_record
from cesynth.release import register_release, resolve_cascade, resolve_model
from cesynth.settings import TrainSettings
from cesynth.tracking import init_store
from cesynth.train import train

GRID = (32, 40, 32)
MASK_METHOD = (brainmask.available_methods() or ["deepbet"])[0]
MAX_ADC = 2.5e-3  # below CSF, not the default 4e-3: the recorded limit must be applied
PREPROCESSING = preprocessing_record(
    {"model_grid": list(GRID), "normalise": "histeq", "brainmask": MASK_METHOD,
     "brainmask_reference": "T1w", "adc": {"max_adc": MAX_ADC}, "registration": {"seed": 0}},
    modalities=["T1w", "T2w", "adc"])
LEGACY_PREPROCESSING = {"model_grid": list(GRID), "normalise": "histeq", "brainmask": "auto"}
SETTINGS = {
    "model": "hrfcn3d", "width_multiplier": 1 / 16, "blocks_per_module": 1,
    "stages": [[1, 1.0, 1.0, 1.0, 3e-3]], "patches_per_subject": 3,
    "checkpoint_every_steps": 0, "seed": 5, "device": "cpu",
}
MODALITIES = ("T1w", "T2w", "adc")
CASCADE_SETTINGS = {**SETTINGS, "modalities": ["T1w"], "stages": [[1, 1.0, 1.0, 0.0, 3e-3]]}


# ---------------------------------------------------------------- helpers


def cesynth(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run([CESYNTH, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=environment)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def scans(cohort: Path, subject: str) -> dict[str, Path]:
    base = cohort / subject
    return {"t1": base / "anat" / f"{subject}_T1w.nii.gz",
            "t2": base / "anat" / f"{subject}_T2w.nii.gz",
            "dwi": base / "dwi" / f"{subject}_dwi.nii.gz",
            "bval": base / "dwi" / f"{subject}_dwi.bval",
            "bvec": base / "dwi" / f"{subject}_dwi.bvec",
            "adc": cohort / "derivatives" / "phantom" / subject
            / f"{subject}_desc-trueadc_adc.nii.gz"}


def data(path: Path) -> np.ndarray:
    return nib.load(str(path)).get_fdata(dtype=np.float32)


def sidecar_of(path: Path) -> dict:
    return json.loads(sidecar_path(path).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("patients") / "bids"
    phantom.make_cohort(out, 2, seed=3, n_set_b=1,
                        settings=phantom.PhantomSettings(voxel_mm=4.0))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny trained model whose checkpoint records the preprocessing of its training data."""
    return trained_checkpoint(tmp_path_factory.mktemp("training"), SETTINGS, PREPROCESSING)


@pytest.fixture(scope="module")
def old_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """The same model as a checkpoint written before the preprocessing record existed."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del state["preprocessing"]
    path = tmp_path_factory.mktemp("old") / "checkpoint_old.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def dwi_run(cohort, checkpoint, tmp_path_factory) -> dict:
    """sub-01 from T1, T2 and DWI (ADC fitted here), keeping the work folder."""
    files = scans(cohort, "sub-01")
    before = tree_digest(cohort / "sub-01")
    out_dir = tmp_path_factory.mktemp("dwi_out")
    summary = predict_patient(files["t1"], files["t2"], dwi=files["dwi"], bval=files["bval"],
                              bvec=files["bvec"], model=checkpoint,
                              out=out_dir / "sub-01_synthetic.nii.gz",
                              work_dir=out_dir / "work")
    return {"summary": summary, "files": files, "out_dir": out_dir, "before": before,
            "after": tree_digest(cohort / "sub-01")}


@pytest.fixture(scope="module")
def mlflow_store(checkpoint, tmp_path_factory) -> dict:
    """A real SQLite store: a run that logged the checkpoint, registered as a model version."""

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(init_store(uri, "predict-tests"))
    run_id = run.info.run_id
    client.log_artifact(run_id, str(checkpoint))
    client.set_terminated(run_id)
    client.create_registered_model("cesynth-tiny")
    version = client.create_model_version("cesynth-tiny", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("cesynth-tiny", "champion", version.version)
    return {"uri": uri, "run_id": run_id, "version": version.version}


@pytest.fixture(scope="module")
def cli_adc_run(cohort, mlflow_store, tmp_path_factory) -> dict:
    """sub-02 through the command line, from T1, T2 and an ADC map, with the model-grid image;
    the model is a registered version in the store MLFLOW_TRACKING_URI names."""
    files = scans(cohort, "sub-02")
    out_dir = tmp_path_factory.mktemp("adc_out")
    result = cesynth("predict", "--t1", files["t1"], "--t2", files["t2"], "--adc", files["adc"],
                     "--model", "models:/cesynth-tiny@champion",
                     "--out", out_dir / "sub-02_synthetic.nii.gz",
                     "--out-model-grid", out_dir / "sub-02_space-model_synthetic.nii.gz",
                     "--keep-work", out_dir / "work",
                     env={"MLFLOW_TRACKING_URI": mlflow_store["uri"]})
    return {"result": result, "files": files, "out_dir": out_dir}


@pytest.fixture(scope="module")
def t1_only_run(cohort, checkpoint, tmp_path_factory) -> dict:
    """sub-02 from the T1 alone, with the temporary folder watched."""
    temp_root = tmp_path_factory.mktemp("tmpdir")
    out = tmp_path_factory.mktemp("t1_out") / "sub-02_synthetic.nii.gz"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tempfile.tempdir", str(temp_root))
        summary = predict_patient(scans(cohort, "sub-02")["t1"], model=checkpoint, out=out)
    return {"summary": summary, "out": out, "temp_root": temp_root}


@pytest.fixture(scope="module")
def cascade_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny T1 -> T2 and T1 -> ADC models with the CE-T1 model's grid and normalisation."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cascade_training")
    cache = cached_training_subject(root, np.random.default_rng(1))
    found = {}
    for target in ("T2w", "adc"):
        settings = TrainSettings.from_dict({**CASCADE_SETTINGS, "target": target})
        summary = train([cache], [], root / target, settings, preprocessing=PREPROCESSING)
        stretch_output(summary["checkpoint_best"], settings, cache)
        found[target] = Path(summary["checkpoint_best"])
    return found


@pytest.fixture(scope="module")
def workflow_layout(checkpoint, cascade_checkpoints, tmp_path_factory) -> Path:
    """The workflow's layout: train/default/ beside train/cascade-T2w/ and train/cascade-adc/."""
    train_dir = tmp_path_factory.mktemp("results") / "train"
    model = train_dir / "default" / checkpoint.name
    model.parent.mkdir(parents=True)
    shutil.copyfile(checkpoint, model)
    for target, path in cascade_checkpoints.items():
        (train_dir / f"cascade-{target}").mkdir()
        shutil.copyfile(path, train_dir / f"cascade-{target}" / checkpoint.name)
    return model


@pytest.fixture(scope="module")
def other_grid_cascade(cascade_checkpoints, tmp_path_factory) -> Path:
    """The T1 -> T2 model as if trained on another model grid."""
    state = torch.load(cascade_checkpoints["T2w"], map_location="cpu", weights_only=False)
    state["preprocessing"] = {**state["preprocessing"], "model_grid": [48, 48, 32]}
    path = tmp_path_factory.mktemp("other_grid") / "checkpoint_best.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def cascade_run(cohort, workflow_layout, tmp_path_factory) -> dict:
    """sub-02 from the T1 alone, with the cascade checkpoints beside the CE-T1 checkpoint."""
    out_dir = tmp_path_factory.mktemp("cascade_out")
    summary = predict_patient(scans(cohort, "sub-02")["t1"], model=workflow_layout,
                              out=out_dir / "sub-02_synthetic.nii.gz", work_dir=out_dir / "work")
    return {"summary": summary, "out": out_dir / "sub-02_synthetic.nii.gz", "out_dir": out_dir}


@pytest.fixture(scope="module")
def cascade_release(checkpoint, cascade_checkpoints, tmp_path_factory) -> dict:
    """A real SQLite store holding a release of the CE-T1 model with both cascade models."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow_cascade') / 'mlflow.db'}"
    with tracking.stage_run("release_model", {"experiment": "default"}, uri=uri):
        record = register_release(checkpoint, "cesynth-cascade", cascade=cascade_checkpoints)
    return {"uri": uri, "record": record}


# ---------------------------------------------------------------- end to end


def test_dwi_prediction_is_a_synthetic_image_on_the_t1_grid(dwi_run, tmp_path_factory):
    out = dwi_run["out_dir"] / "sub-01_synthetic.nii.gz"
    img, t1 = nib.load(str(out)), nib.load(str(dwi_run["files"]["t1"]))
    assert img.shape == t1.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, t1.affine, atol=1e-4)
    assert is_synthetic(img)

    prediction = img.get_fdata(dtype=np.float32)
    brain = data(dwi_run["out_dir"] / "work" / "T1w_desc-brain_mask.nii.gz") > 0
    assert not np.any(prediction[~brain])
    inside = prediction[brain]
    assert inside.min() >= 0 and inside.max() <= 1
    assert np.count_nonzero((inside > 0) & (inside < 1)) > 0.2 * inside.size

    summary = dwi_run["summary"]
    assert summary["output"] == str(out) and summary["sidecar"] == str(sidecar_path(out))
    assert summary["missing_modalities"] == [] and summary["adc_source"] == "dwi"
    assert summary["preprocessing"]["model_grid"] == list(GRID)
    assert set(summary["registration"]) == {"T2w", "adc"}
    assert all(r["mi_after"] > r["mi_before"] for r in summary["registration"].values())
    assert {"load_model", "fit_adc", "register_T2w", "register_dwi", "brainmask", "model_grid",
            "synthesize", "to_native", "write", "total"} <= set(summary["seconds"])


def test_dwi_prediction_sidecar_names_base_names_only(dwi_run, checkpoint, tmp_path_factory):
    out = dwi_run["out_dir"] / "sub-01_synthetic.nii.gz"
    text = sidecar_path(out).read_text()
    sidecar = json.loads(text)
    assert sidecar["Synthetic"] is True and sidecar["Space"] == "T1w"
    assert sidecar["InputModalities"] == list(MODALITIES) and sidecar["MissingModalities"] == []
    assert sidecar["CheckpointSHA256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert sidecar["ModelSource"] == checkpoint.name
    assert sidecar["Sources"] == [dwi_run["files"][k].name
                                  for k in ("t1", "t2", "dwi", "bval", "bvec")]
    assert sidecar["Preprocessing"]["ModelGrid"] == list(GRID)
    assert sidecar["FilledInputs"] == {} and sidecar["CascadeModels"] == {}
    assert str(tmp_path_factory.getbasetemp()) not in text


def test_dwi_prediction_applies_the_recorded_preprocessing_exactly(dwi_run):
    sidecar = sidecar_of(dwi_run["out_dir"] / "sub-01_synthetic.nii.gz")
    assert sidecar["ModelPreprocessing"] == PREPROCESSING
    assert sidecar["PreprocessingOverrides"] == {} and sidecar["PreprocessingDifferences"] == {}
    applied = sidecar["Preprocessing"]
    assert applied["BrainMaskMethod"] == MASK_METHOD and applied["BrainMaskReference"] == "T1w"
    assert applied["NormalisationOptions"] == {"nbins": None, "bias_correction": "none",
                                               "saturation": "exclude",
                                               "saturation_min_share": 1e-4}
    assert applied["RegistrationSeed"] == 0
    assert "b = 0, 500, 1000 s/mm2" in applied["ADC"] and "0.0025] mm2/s" in applied["ADC"]
    # the ADC fitted here is clipped at the recorded limit, not at the function's default
    fitted = data(dwi_run["out_dir"] / "work" / "adc.nii.gz")
    assert fitted.max() == pytest.approx(MAX_ADC) and np.count_nonzero(fitted >= MAX_ADC) > 0
    assert dwi_run["summary"]["preprocessing"]["adc"]["max_adc"] == MAX_ADC


def with_record(checkpoint: Path, folder: Path, **changes) -> Path:
    """A copy of the checkpoint whose preprocessing record has ``changes``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["preprocessing"] = {**state["preprocessing"], **changes}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "checkpoint_best.pt")
    return folder / "checkpoint_best.pt"


def test_a_recorded_mask_method_not_installed_here_is_refused_unless_overridden(
        capsys, monkeypatch, cohort, checkpoint, tmp_path):
    monkeypatch.setitem(brainmask._AVAILABILITY, "fsl", lambda: False)  # CI may have FSL
    fsl_model = with_record(checkpoint, tmp_path / "fsl", brainmask="fsl")
    t1, out = scans(cohort, "sub-02")["t1"], tmp_path / "out" / "synthetic.nii.gz"
    code = cli.main(["predict", "--t1", str(t1), "--model", str(fsl_model), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and lines == [
        f"error: {fsl_model}: the model was trained on fsl brain masks and fsl is not "
        "installed here; install it, or pass --brainmask-method METHOD to predict with another "
        "method (the sidecar records the override)"]
    assert not out.parent.exists()

    summary = predict_patient(t1, model=fsl_model, out=out, brainmask_method="auto")
    used = brainmask.resolve_method("auto")
    override = {"BrainMaskMethod": {"Recorded": "fsl", "Used": used}}
    sidecar = sidecar_of(out)
    assert sidecar["PreprocessingOverrides"] == override
    assert sidecar["Preprocessing"]["BrainMaskMethod"] == used
    assert summary["preprocessing"]["overrides"] == override and summary["brainmask"][
        "method"] == used


def test_the_recorded_b_values_are_the_ones_fitted(cohort, checkpoint, tmp_path):
    model = with_record(checkpoint, tmp_path / "b1500",
                        adc={**PREPROCESSING["adc"], "b_values": [0.0, 500.0, 1500.0],
                             "required_b_values": [0.0, 500.0, 1500.0]})
    files = scans(cohort, "sub-01")
    out = tmp_path / "synthetic.nii.gz"
    with pytest.raises(InputError, match=r"no b=1500 s/mm2 shell") as caught:
        predict_patient(files["t1"], dwi=files["dwi"], bval=files["bval"], bvec=files["bvec"],
                        model=model, out=out)
    assert caught.value.who == str(files["bval"]) and not out.exists()


def test_what_predict_cannot_do_as_recorded_is_named(checkpoint):
    generator = load_generator(checkpoint)

    def resolve(**record):
        changed = dataclasses.replace(generator,
                                      preprocessing={**generator.preprocessing, **record})
        return resolve_preprocessing(changed, "model.pt")

    # the paper's choice: training masks from the CE-T1, which a new patient does not have
    assert resolve(brainmask_reference="ceT1w").differences == {"BrainMaskReference": {
        "Recorded": "ceT1w", "Used": "T1w",
        "Why": "a new patient has no CE-T1; the brain mask is computed from the T1"}}
    assert resolve(cesynth_version="0.0.1").differences["CesynthVersion"]["Used"] == __version__
    other = {**PREPROCESSING["registration"], "metric": "cc"}
    with pytest.raises(InputError, match="registered with metric = 'cc', this cesynth"):
        resolve(registration=other)
    # an old record: what the workflow did then, resolved here and named
    old = resolve_preprocessing(dataclasses.replace(generator,
                                                    preprocessing=LEGACY_PREPROCESSING), "old")
    assert old.brainmask == brainmask.resolve_method("auto")
    assert set(old.differences) == {"BrainMaskMethod", "BrainMaskReference", "CesynthVersion"}
    assert old.adc["max_adc"] == 4e-3 and old.registration_seed == 0
    # explicit choices against the record are overrides
    chosen = resolve_preprocessing(generator, "model.pt", seed=3, normalise="percentile")
    assert chosen.overrides == {"RegistrationSeed": {"Recorded": 0, "Used": 3},
                                "Normalisation": {"Recorded": "histeq", "Used": "percentile"}}
    assert chosen.normalise_options == {"p_low": 0.5, "p_high": 99.5, "bias_correction": "none",
                                        "saturation": "exclude", "saturation_min_share": 1e-4}
    assert resolve_preprocessing(generator, "model.pt", seed=0).overrides == {}
    assert PREPROCESSING["registration"] == {"seed": 0, **registration.method_record()}


def test_inputs_are_only_read_and_work_files_are_kept(dwi_run):
    assert dwi_run["after"] == dwi_run["before"]
    work = dwi_run["out_dir"] / "work"
    for name in ("adc.nii.gz", "adc_space-T1w.nii.gz", "T2w_space-T1w.nii.gz",
                 "space-model_desc-brain_mask.nii.gz", "T1w_space-model_desc-norm.nii.gz"):
        assert (work / name).is_file(), name
    assert sorted(p.name for p in dwi_run["out_dir"].iterdir()) == [
        "sub-01_synthetic.json", "sub-01_synthetic.nii.gz", "work"]


def test_cli_with_an_adc_map_prints_a_json_summary(cli_adc_run):
    result, out_dir = cli_adc_run["result"], cli_adc_run["out_dir"]
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["adc_source"] == "adc" and summary["missing_modalities"] == []
    assert summary["output"] == str(out_dir / "sub-02_synthetic.nii.gz")
    assert summary["work_dir"] == str(out_dir / "work")
    steps_run = set(summary["seconds"])
    assert "register_adc" in steps_run and "fit_adc" not in steps_run

    img, t1 = nib.load(summary["output"]), nib.load(str(cli_adc_run["files"]["t1"]))
    assert is_synthetic(img) and img.shape == t1.shape
    assert (out_dir / "work" / "adc_space-T1w.nii.gz").is_file()
    assert (out_dir / "work" / "model" / "checkpoint_best.pt").is_file()  # as released
    sidecar = sidecar_of(Path(summary["output"]))
    assert sidecar["Sources"] == [cli_adc_run["files"][k].name for k in ("t1", "t2", "adc")]
    assert sidecar["ModelSource"] == "models:/cesynth-tiny@champion"


def test_cli_writes_the_model_grid_image_on_request(cli_adc_run):
    summary = json.loads(cli_adc_run["result"].stdout)
    grid_img = nib.load(summary["output_model_grid"])
    assert grid_img.shape == GRID and is_synthetic(grid_img)
    assert sidecar_of(Path(summary["output_model_grid"]))["Space"] == "model"


def test_missing_t2_and_adc_are_zero_filled_and_recorded(t1_only_run):
    summary = t1_only_run["summary"]
    assert summary["missing_modalities"] == ["T2w", "adc"] and summary["registration"] == {}
    assert summary["adc_source"] is None and summary["work_dir"] is None
    sidecar = sidecar_of(t1_only_run["out"])
    assert sidecar["InputModalities"] == ["T1w"]
    assert sidecar["MissingModalities"] == ["T2w", "adc"]
    assert sidecar["MissingModalityFill"] == "zeros"
    assert sidecar["FilledInputs"] == {"T2w": "zeros", "adc": "zeros"}
    assert summary["filled_inputs"] == {"T2w": "zeros", "adc": "zeros"}
    assert is_synthetic(nib.load(str(t1_only_run["out"])))
    assert not list(t1_only_run["temp_root"].glob("cesynth-predict-*"))


def test_back_to_native_follows_world_coordinates_and_keeps_the_brain_edge():
    affine = np.array([[0, -3.0, 0, 50], [2.5, 0, 0, -40], [0, 0, 3.5, -30], [0, 0, 0, 1]])
    ijk = np.indices((30, 34, 28)).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, 30, 34, 28)
    ramp = (0.2 + 0.6 * (world[1] - world[1].min()) / np.ptp(world[1])).astype(np.float32)
    centre = world.reshape(3, -1).mean(axis=1)[:, None, None, None]
    brain = (np.linalg.norm(world - centre, axis=0) < 30).astype(np.uint8)
    native_img, mask_img = nib.Nifti1Image(ramp, affine), nib.Nifti1Image(brain, affine)
    grid = ModelGrid((20, 24, 16))
    model_mask = grid.resample(mask_img, is_mask=True)
    prediction = nib.Nifti1Image(np.asarray(grid.resample(native_img).dataobj)
                                 * np.asarray(model_mask.dataobj), model_mask.affine)

    back = to_native_grid(prediction, model_mask, native_img, mask_img)
    assert back.shape == ramp.shape and not np.any(back[brain == 0])
    edge = (brain > 0) & ~ndimage.binary_erosion(brain)
    error = back - ramp
    assert np.abs(error[brain > 0]).mean() < 0.01
    assert abs(error[edge & (back > 0)].mean()) < 0.02


def test_coregistered_inputs_are_copied_not_registered(dwi_run, checkpoint, tmp_path):
    """--coregistered (a cohort such as BraTS): inputs already on the T1's grid are checked and
    copied, so the model sees exactly them; an input off the grid stops with one line."""
    work = dwi_run["out_dir"] / "work"
    t1, aligned_t2, aligned_adc = (dwi_run["files"]["t1"], work / "T2w_space-T1w.nii.gz",
                                   work / "adc_space-T1w.nii.gz")
    out = tmp_path / "aligned" / "synthetic.nii.gz"
    result = cesynth("predict", "--t1", t1, "--t2", aligned_t2, "--adc", aligned_adc,
                     "--coregistered", "--model", checkpoint, "--out", out,
                     "--keep-work", tmp_path / "work")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["preprocessing"]["coregistered"] is True
    for modality in ("T2w", "adc"):
        assert summary["registration"][modality]["mi_before"] == pytest.approx(
            summary["registration"][modality]["mi_after"])
    np.testing.assert_array_equal(data(tmp_path / "work" / "T2w_space-T1w.nii.gz"),
                                  data(aligned_t2))
    assert sidecar_of(out)["Preprocessing"]["Registration"] == "identity (declared co-registered)"

    off_grid = tmp_path / "off" / "synthetic.nii.gz"
    refused = cesynth("predict", "--t1", t1, "--t2", dwi_run["files"]["t2"], "--coregistered",
                      "--model", checkpoint, "--out", off_grid)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: sub-01_T2w.nii.gz: not on the T1 grid: shape "), line
    assert line.endswith("--coregistered declares every input on the T1's grid; "
                         "leave it out to register"), line
    assert not off_grid.exists()


# ---------------------------------------------------------------- errors


def test_dwi_without_bval_is_a_one_line_error(cohort, checkpoint, tmp_path):
    files = scans(cohort, "sub-01")
    out = tmp_path / "synthetic.nii.gz"
    result = cesynth("predict", "--t1", files["t1"], "--dwi", files["dwi"], "--bvec",
                     files["bvec"], "--model", checkpoint, "--out", out)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: {files['dwi']}: a DWI needs its --bval and --bvec files"]
    assert not list(tmp_path.iterdir())


def test_missing_t1_is_a_one_line_error_and_writes_nothing(checkpoint, tmp_path):
    missing = tmp_path / "nowhere_T1w.nii.gz"
    out = tmp_path / "out" / "synthetic.nii.gz"
    result = cesynth("predict", "--t1", missing, "--model", checkpoint, "--out", out)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: {missing}: file not found"]
    assert not out.exists() and not out.parent.exists()


def test_adc_and_dwi_together_are_refused_in_one_line(capsys, cohort, checkpoint, tmp_path):
    files = scans(cohort, "sub-01")
    with pytest.raises(SystemExit) as caught:
        cli.main(["predict", "--t1", str(files["t1"]), "--adc", str(files["adc"]), "--dwi",
                  str(files["dwi"]), "--model", str(checkpoint), "--out",
                  str(tmp_path / "x.nii.gz")])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cesynth predict: argument --dwi")


def test_checkpoint_without_preprocessing_is_refused(capsys, cohort, old_checkpoint, tmp_path):
    out = tmp_path / "synthetic.nii.gz"
    code = cli.main(["predict", "--t1", str(scans(cohort, "sub-01")["t1"]), "--model",
                     str(old_checkpoint), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {old_checkpoint}: checkpoint has no preprocessing record")
    assert not list(tmp_path.iterdir())


def test_explicit_grid_and_normalisation_stand_in_for_the_record(old_checkpoint):
    generator = load_generator(old_checkpoint)
    assert generator.preprocessing == {}
    prep = resolve_preprocessing(generator, "old", model_grid=GRID, normalise="percentile")
    assert prep.model_grid == GRID and prep.normalise == "percentile"
    assert prep.brainmask == brainmask.resolve_method("auto")  # nothing recorded: resolved here
    assert prep.differences["BrainMaskMethod"]["Recorded"] == "not recorded"
    partial = dataclasses.replace(generator, preprocessing={"model_grid": list(GRID)})
    with pytest.raises(InputError, match="has no normalise in its preprocessing record"):
        resolve_preprocessing(partial, "partial")
    assert resolve_preprocessing(partial, "partial", normalise="histeq").model_grid == GRID


def test_a_failing_step_leaves_nothing_at_the_output(cohort, checkpoint, tmp_path):
    flat_t2 = save_nifti(np.ones((8, 8, 8)), np.eye(4), tmp_path / "in" / "flat_T2w.nii.gz")
    out = tmp_path / "out" / "synthetic.nii.gz"
    with pytest.raises(InputError, match="constant image") as caught:
        predict_patient(scans(cohort, "sub-01")["t1"], flat_t2, model=checkpoint, out=out)
    assert caught.value.who == str(flat_t2)
    assert not out.exists() and not sidecar_path(out).exists()


def test_outputs_may_not_overwrite_inputs(cohort, checkpoint):
    t1 = scans(cohort, "sub-01")["t1"]
    before = t1.read_bytes()
    with pytest.raises(InputError, match="overwrite an input"):
        predict_patient(t1, model=checkpoint, out=t1)
    with pytest.raises(InputError, match=r"\.nii or \.nii\.gz"):
        predict_patient(t1, model=checkpoint, out=t1.with_name("synthetic.mgz"))
    assert t1.read_bytes() == before


# ---------------------------------------------------------------- models in MLflow


def test_resolve_model_takes_a_checkpoint_path(checkpoint):
    assert resolve_model(checkpoint) == checkpoint
    assert resolve_model(str(checkpoint)) == checkpoint


@pytest.mark.parametrize("reference", ["runs:/{run_id}/model", "models:/cesynth-tiny/{version}",
                                       "models:/cesynth-tiny@champion",
                                       "models:/cesynth-tiny/latest"])
def test_resolve_model_downloads_the_runs_checkpoint(reference, mlflow_store, checkpoint,
                                                     tmp_path):
    uri = reference.format(**mlflow_store)
    path = resolve_model(uri, tmp_path / "download", tracking_uri=mlflow_store["uri"])
    assert path.name == "checkpoint_best.pt" and path.parent == tmp_path / "download"
    assert path.read_bytes() == checkpoint.read_bytes()
    assert load_generator(path).preprocessing == PREPROCESSING


@pytest.mark.parametrize(("reference", "problem"), [
    ("no-such-checkpoint.pt", "not a checkpoint file or an MLflow runs:/ or models:/ URI"),
    ("models:/cesynth-tiny/99", "no such registered model version"),
    ("models:/cesynth-tiny", "expected models:/<name>/<version or alias>"),
    ("runs:/0123456789abcdef/model", "cannot fetch checkpoint_final.pt or checkpoint_best.pt"),
])
def test_resolve_model_refuses_what_it_cannot_find(reference, problem, mlflow_store, tmp_path):
    with pytest.raises(InputError) as caught:
        resolve_model(reference, tmp_path, tracking_uri=mlflow_store["uri"])
    assert caught.value.who == reference and caught.value.problem.startswith(problem)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_without_preprocessing_cannot_be_released(old_checkpoint, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.stage_run("release_model", {"experiment": "old"}, uri=uri), \
            pytest.raises(InputError, match="no preprocessing record") as caught:
        register_release(old_checkpoint, "cesynth-old")
    assert caught.value.who == str(old_checkpoint)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    assert client.search_registered_models() == []  # nothing half-released


# ---------------------------------------------------------------- cascade for missing inputs


def test_missing_inputs_come_from_the_cascade_beside_the_model(cascade_run, t1_only_run,
                                                               cascade_checkpoints):
    summary = cascade_run["summary"]
    assert summary["filled_inputs"] == {"T2w": "cascade", "adc": "cascade"}
    assert summary["missing_modalities"] == ["T2w", "adc"] and summary["input_modalities"] == [
        "T1w"]
    assert {"load_cascade", "cascade_T2w", "cascade_adc"} <= set(summary["seconds"])
    sidecar = sidecar_of(cascade_run["out"])
    assert sidecar["InputModalities"] == ["T1w"]
    assert sidecar["MissingModalities"] == ["T2w", "adc"]  # not acquired
    assert sidecar["FilledInputs"] == {"T2w": "cascade", "adc": "cascade"}
    assert sidecar["MissingModalityFill"] == "cascade"
    assert "T2w synthesized from the T1 by a cascade model" in sidecar["Description"]
    for target, path in cascade_checkpoints.items():
        assert sidecar["CascadeModels"][target] == {
            "Checkpoint": "checkpoint_best.pt", "CheckpointSHA256": sha256(path),
            "Model": "hrfcn3d"}
    work = cascade_run["out_dir"] / "work"
    brain = data(work / "space-model_desc-brain_mask.nii.gz") > 0
    for target in ("T2w", "adc"):
        synthetic_input = nib.load(str(work / f"{target}_space-model_desc-cascade.nii.gz"))
        assert is_synthetic(synthetic_input)
        assert np.count_nonzero(synthetic_input.get_fdata()[brain]) > 0.2 * brain.sum()
    with_cascade, zero_filled = data(cascade_run["out"]), data(t1_only_run["out"])
    assert with_cascade.shape == zero_filled.shape
    assert np.abs(with_cascade - zero_filled).max() > 0.05


def test_no_cascade_fills_zeros(cohort, workflow_layout, t1_only_run, tmp_path):
    out = tmp_path / "sub-02_synthetic.nii.gz"
    result = cesynth("predict", "--t1", scans(cohort, "sub-02")["t1"], "--model",
                     workflow_layout, "--out", out, "--no-cascade")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["filled_inputs"] == {"T2w": "zeros", "adc": "zeros"}
    assert summary["cascade_models"] == {}
    sidecar = sidecar_of(out)
    assert sidecar["FilledInputs"] == {"T2w": "zeros", "adc": "zeros"}
    assert sidecar["MissingModalityFill"] == "zeros" and sidecar["CascadeModels"] == {}
    np.testing.assert_allclose(data(out), data(t1_only_run["out"]), atol=1e-5)


def test_a_cascade_given_by_hand_fills_its_input_and_zeros_the_other(cohort, checkpoint,
                                                                     cascade_checkpoints,
                                                                     tmp_path):
    assert resolve_cascade(checkpoint) == {}  # nothing beside the module's checkpoint
    out = tmp_path / "sub-02_synthetic.nii.gz"
    summary = predict_patient(scans(cohort, "sub-02")["t1"], model=checkpoint, out=out,
                              cascade={"T2w": cascade_checkpoints["T2w"], "adc": None})
    assert summary["filled_inputs"] == {"T2w": "cascade", "adc": "zeros"}
    sidecar = sidecar_of(out)
    assert sidecar["MissingModalityFill"] == "cascade, zeros"
    assert set(sidecar["CascadeModels"]) == {"T2w"}


def test_a_cascade_on_another_model_grid_is_refused_in_one_line(capsys, cohort, workflow_layout,
                                                                 other_grid_cascade, tmp_path):
    out = tmp_path / "synthetic.nii.gz"
    code = cli.main(["predict", "--t1", str(scans(cohort, "sub-02")["t1"]), "--model",
                     str(workflow_layout), "--cascade-t2", str(other_grid_cascade),
                     "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {other_grid_cascade}: cascade model for T2w was trained "
                               "on model grid [48, 48, 32]")
    assert "--no-cascade" in lines[0]
    assert not list(tmp_path.iterdir())


def test_cascade_checkpoints_given_with_no_cascade_are_refused(cascade_checkpoints, tmp_path):
    with pytest.raises(InputError, match="choose one"):
        check_cascade_files({"T2w": cascade_checkpoints["T2w"]}, use_cascade=False)
    with pytest.raises(InputError, match="file not found"):
        check_cascade_files({"adc": tmp_path / "missing.pt"})


def test_resolve_cascade_finds_the_workflows_sibling_folders(workflow_layout):
    train_dir = workflow_layout.parent.parent
    assert resolve_cascade(workflow_layout) == {
        "T2w": train_dir / "cascade-T2w" / "checkpoint_best.pt",
        "adc": train_dir / "cascade-adc" / "checkpoint_best.pt"}


def test_register_release_logs_the_cascade_models(cascade_release, cascade_checkpoints,
                                                  tmp_path):
    uri, record = cascade_release["uri"], cascade_release["record"]
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    logged = sorted(a.path for a in client.list_artifacts(record["run_id"], "cascade"))
    assert logged == ["cascade/T2w.pt", "cascade/adc.pt"]
    version = client.get_model_version("cesynth-cascade", str(record["version"]))
    assert version.tags["cascade"] == "T2w,adc"
    assert version.tags["cascade_T2w_sha256"] == sha256(cascade_checkpoints["T2w"])
    assert record["cascade"] == {t: sha256(p) for t, p in cascade_checkpoints.items()}
    found = resolve_cascade(f"runs:/{record['run_id']}/model", tmp_path, tracking_uri=uri)
    assert found["T2w"] == tmp_path / "cascade" / "T2w.pt"
    assert found["T2w"].read_bytes() == cascade_checkpoints["T2w"].read_bytes()


def test_a_cascade_on_another_grid_is_not_released(checkpoint, other_grid_cascade, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.stage_run("release_model", {"experiment": "bad"}, uri=uri), \
            pytest.raises(InputError, match="cascade model for T2w was trained on model grid"):
        register_release(checkpoint, "cesynth-bad", cascade={"T2w": other_grid_cascade})
    assert mlflow.MlflowClient(uri, registry_uri=uri).search_registered_models() == []


def test_prediction_from_a_registered_release_uses_its_cascade(cohort, cascade_release,
                                                               cascade_run,
                                                               cascade_checkpoints, tmp_path):
    out = tmp_path / "sub-02_synthetic.nii.gz"
    model = f"models:/cesynth-cascade/{cascade_release['record']['version']}"
    result = cesynth("predict", "--t1", scans(cohort, "sub-02")["t1"], "--model", model,
                     "--out", out, "--keep-work", tmp_path / "work",
                     env={"MLFLOW_TRACKING_URI": cascade_release["uri"]})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work" / "model" / "cascade" / "adc.pt").is_file()
    sidecar = sidecar_of(out)
    assert sidecar["FilledInputs"] == {"T2w": "cascade", "adc": "cascade"}
    assert sidecar["ModelSource"] == model
    for target, path in cascade_checkpoints.items():
        assert sidecar["CascadeModels"][target]["Checkpoint"] == f"{target}.pt"
        assert sidecar["CascadeModels"][target]["CheckpointSHA256"] == sha256(path)
    np.testing.assert_allclose(data(out), data(cascade_run["out"]), atol=1e-5)


# ---------------------------------------------------------------- FLAIR


FLAIR_INPUTS = ["T1w", "T2w", "adc", "FLAIR"]


@pytest.fixture(scope="module")
def flair_patient(tmp_path_factory) -> dict[str, Path]:
    """A phantom patient with a FLAIR (inversion recovery, CSF nulled) beside T1, T2 and DWI."""
    root = tmp_path_factory.mktemp("flair_patient") / "bids"
    plan = phantom.make_cohort(root, 1, seed=4, n_set_b=0, flair=True,
                               settings=phantom.PhantomSettings(voxel_mm=4.0))
    subject = str(plan["participant_id"].iloc[0])
    return {**scans(root, subject), "flair": root / subject / "anat" / f"{subject}_FLAIR.nii.gz"}


@pytest.fixture(scope="module")
def flair_checkpoint(tmp_path_factory) -> Path:
    """A tiny model that takes T1, T2, ADC and FLAIR; its record says so."""
    record = {**PREPROCESSING, "modalities": FLAIR_INPUTS}
    return trained_checkpoint(tmp_path_factory.mktemp("flair_training"),
                              {**SETTINGS, "modalities": FLAIR_INPUTS}, record)


@pytest.fixture(scope="module")
def flair_runs(flair_patient, flair_checkpoint, tmp_path_factory) -> dict:
    """The FLAIR model through the command line with --flair, and without it."""
    out_dir = tmp_path_factory.mktemp("flair_out")
    files = flair_patient
    common = ("--t1", files["t1"], "--t2", files["t2"], "--adc", files["adc"],
              "--model", flair_checkpoint)
    runs = {}
    for name, extra in (("with", ("--flair", files["flair"])), ("without", ())):
        out = out_dir / name / "synthetic.nii.gz"
        result = cesynth("predict", *common, *extra, "--out", out,
                         "--keep-work", out_dir / f"{name}_work")
        runs[name] = {"result": result, "out": out, "work": out_dir / f"{name}_work"}
    return runs


def test_predict_flair_registers_and_normalises_the_flair_as_the_t2(flair_runs, flair_patient):
    run = flair_runs["with"]
    assert run["result"].returncode == 0, run["result"].stderr
    summary = json.loads(run["result"].stdout)
    assert summary["input_modalities"] == FLAIR_INPUTS and summary["missing_modalities"] == []
    assert summary["registration"]["FLAIR"]["mi_after"] > summary["registration"]["FLAIR"][
        "mi_before"]
    sidecar = sidecar_of(run["out"])
    assert sidecar["ModelInputs"] == FLAIR_INPUTS and sidecar["InputModalities"] == FLAIR_INPUTS
    assert flair_patient["flair"].name in sidecar["Sources"]
    assert sidecar["Preprocessing"]["Registered"] == ["T2w", "FLAIR", "adc"]
    assert sidecar["ModelPreprocessing"]["modalities"] == FLAIR_INPUTS
    norm = data(run["work"] / "FLAIR_space-model_desc-norm.nii.gz")
    mask = data(run["work"] / "space-model_desc-brain_mask.nii.gz") > 0
    assert norm.min() >= 0 and norm.max() <= 1 and np.all(norm[~mask] == 0)
    assert norm[mask].std() > 0.1  # equalised inside the brain, as every input


def test_predict_without_the_flair_a_model_takes_fills_zeros_and_says_so(flair_runs):
    run = flair_runs["without"]
    assert run["result"].returncode == 0, run["result"].stderr
    sidecar = sidecar_of(run["out"])
    assert sidecar["MissingModalities"] == ["FLAIR"]
    assert sidecar["FilledInputs"] == {"FLAIR": "zeros"}
    assert "FLAIR filled with zeros" in sidecar["Description"]
    assert not np.allclose(data(run["out"]), data(flair_runs["with"]["out"]))


def test_a_flair_given_to_a_model_without_it_is_unused(flair_patient, checkpoint, tmp_path):
    summary = predict_patient(flair_patient["t1"], model=checkpoint, out=tmp_path / "s.nii.gz",
                              flair=flair_patient["flair"])
    assert summary["unused_inputs"] == ["FLAIR"] and "FLAIR" not in summary["registration"]
