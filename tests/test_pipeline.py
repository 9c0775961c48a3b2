"""Real `snakemake` runs of the stages that exist, on the small demo config: every SPEC output for
every subject, one MLflow run per job, nothing to redo on a rerun, only the new subject's jobs
after new data arrives, and a bad subject that stops alone under --keep-going."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import zipfile
from pathlib import Path

import mlflow
import mlflow.pytorch
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from helpers.waiting import wait_until
from helpers.workflow import (
    CESYNTH,
    REPO,
    SNAKEMAKE,
    dry_run_jobs,
    peak_threads,
    snakemake,
    workflow_environment,
)
from nibabel.processing import resample_from_to

from cesynth import release_gate
from cesynth.checkpoint import CHECKPOINT_LATEST, read_checkpoint
from cesynth.evaluate import evaluate_files
from cesynth.io import is_synthetic, read_json, read_tsv

pytestmark = pytest.mark.slow  # real runs of the workflow: minutes each

SMALL = REPO / "config" / "profiles" / "demo-small.yaml"
SUBJECTS = ("01", "02", "03")
# A two-point sweep (one point is the reference itself), the cascade and its condition, a floor.
EXPERIMENTS = {
    "sweeps": {"lossweights": {"stage2": [[0.1, 10.0], [1.0, 1.0]]}},
    "cascade": {"enabled": True},
    "evaluation": {"conditions": ["zero-adc", "cascade-T2w-adc"], "floors": ["t1", "regression"]},
    # the 3-subject demo trains on both Set A subjects: no validation score for the gate's floor
    "release": {"gates": {"require_score": False}},
}


def preproc(results: Path, subject: str, datatype: str, name: str) -> Path:
    return results / "preproc" / f"sub-{subject}" / datatype / f"sub-{subject}_{name}"


def spec_outputs(results: Path, subject: str) -> list[Path]:
    """Every per-subject output path SPEC.md fixes for the stages that exist."""
    anat = [f"space-ceT1w_{m}.nii.gz" for m in ("T1w", "T2w", "adc")]
    anat += [f"from-{m}_to-ceT1w_xfm.mat" for m in ("T1w", "T2w", "dwi")]
    anat += [f"space-model_desc-norm_{m}.nii.gz" for m in ("T1w", "T2w", "adc", "ceT1w")]
    anat += ["desc-brain_mask.nii.gz", "space-model_desc-brain_mask.nii.gz"]
    return [preproc(results, subject, "dwi", "adc.nii.gz")] + [
        preproc(results, subject, "anat", name) for name in anat]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    experiments = workdir / "experiments.yaml"
    experiments.write_text(yaml.safe_dump(EXPERIMENTS))
    args = ("--configfile", str(SMALL), str(experiments))
    planned = dry_run_jobs(workdir, *args)
    result = snakemake(workdir, "--cores", "2", *args)
    return workdir, planned, result, args


def test_every_spec_output_exists_for_every_subject(demo_run):
    workdir, *_ = demo_run
    results = workdir / "results-small"
    for subject in SUBJECTS:
        for path in spec_outputs(results, subject):
            assert path.is_file(), path
    assert (results / "qc" / "sub-01" / "sub-01_desc-montage.png").is_file()
    for stage in ("ingest", "adc", "registration", "brainmask", "normalise"):
        assert (results / "qc" / f"{stage}.tsv").is_file(), stage


def test_jobs_never_hold_more_threads_than_cores(demo_run):
    """Snakemake 9.10-9.16 started a job that became ready alone without reserving its threads
    or memory (snakemake#3913): on 2 cores the study ran five 2-thread trainings at once, one
    of them at 9 s per step instead of 0.25 s alone. The project requires 9.17 or later."""
    _, _, result, _ = demo_run
    assert peak_threads(result.stderr + result.stdout) == 2


def test_outputs_hold_what_spec_says(demo_run):
    workdir, *_ = demo_run
    results = workdir / "results-small"
    adc = nib.load(preproc(results, "01", "dwi", "adc.nii.gz"))
    assert adc.get_data_dtype() == np.float32
    assert 0.6e-3 < np.median(np.asarray(adc.dataobj)[np.asarray(adc.dataobj) > 0]) < 1.2e-3
    shape = tuple(yaml.safe_load(SMALL.read_text())["model_grid"]["shape"])
    mask = nib.load(preproc(results, "01", "anat", "space-model_desc-brain_mask.nii.gz"))
    assert mask.shape == shape
    inside = np.asarray(mask.dataobj) > 0
    for modality in ("T1w", "T2w", "adc", "ceT1w"):
        norm = np.asarray(nib.load(preproc(results, "01", "anat",
                                           f"space-model_desc-norm_{modality}.nii.gz")).dataobj)
        assert norm.shape == shape
        assert norm.min() >= 0 and norm.max() <= 1 and np.all(norm[~inside] == 0)
    sidecar = read_json(preproc(results, "01", "anat", "space-model_desc-brain_mask.json"))
    first, last = sidecar["foreground_slices"]
    assert 0 <= first < last < shape[2]
    ce = nib.load(workdir / "demo-small/bids/sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz")
    registered = nib.load(preproc(results, "01", "anat", "space-ceT1w_T2w.nii.gz"))
    assert registered.shape == ce.shape and np.allclose(registered.affine, ce.affine, atol=1e-3)


def test_sets_and_ingest_tables(demo_run):
    workdir, *_ = demo_run
    results = workdir / "results-small"
    sets = read_tsv(results / "ingest" / "sets.tsv").set_index("scan_id")
    assert sets.loc["03", "set"] == "B" and sets.loc["03", "split"] == "test"
    assert set(sets.loc[["01", "02"], "split"]) <= {"train", "validation"}
    ingest = read_tsv(results / "qc" / "ingest.tsv")
    assert ingest["status"].tolist() == ["included"] * 3


def test_one_mlflow_run_per_job_in_one_invocation(demo_run):
    workdir, planned, *_ = demo_run
    store = workdir / "results-small" / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(experiment_names=["cesynth"], output_format="list")
    per_rule: dict[str, int] = {}
    for run in runs:
        assert run.info.status == "FINISHED"
        per_rule[run.data.tags["cesynth.rule"]] = per_rule.get(run.data.tags["cesynth.rule"], 0) + 1
    expected = {rule: n for rule, n in planned.items() if rule != "all"}
    assert per_rule == {**expected, "sweep": 1}  # the sweep's parent run
    assert len({run.data.tags["cesynth.invocation_id"] for run in runs}) == 1
    (parent,) = [r for r in runs if r.data.tags["cesynth.rule"] == "sweep"]
    points = [r for r in runs if r.data.tags.get("cesynth.sweeps") == "lossweights"]
    assert {r.data.tags["cesynth.wildcard.experiment"] for r in points} == {
        "default", "lossweights-1x1"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in points)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert "paper_tables.md" in artifacts
    adc_runs = [r for r in runs if r.data.tags["cesynth.rule"] == "fit_adc"]
    assert {r.data.tags["cesynth.wildcard.subject"] for r in adc_runs} == set(SUBJECTS)
    assert all("median_in_mask" in r.data.metrics for r in adc_runs)


def test_the_model_is_trained_and_logged(demo_run):
    workdir, *_ = demo_run
    out = workdir / "results-small" / "train" / "default"
    for name in ("checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt",
                 "training_curve.png"):
        assert (out / name).is_file(), name
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'results-small' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["cesynth"], output_format="list",
                                filter_string="tags.`cesynth.rule` = 'train_model' and "
                                              "tags.`cesynth.wildcard.experiment` = 'default'")
    assert run.data.params["model"] == "hrfcn3d"
    # stage 1 in the shared trunk's run (4 steps), the last stage in the experiment's (2 steps)
    (trunk,) = mlflow.search_runs(experiment_names=["cesynth"], output_format="list",
                                  filter_string="tags.`cesynth.rule` = 'train_trunk' and "
                                                "params.target = 'ceT1w'")
    client = mlflow.MlflowClient()
    stage1 = client.get_metric_history(trunk.info.run_id, "train_loss")
    assert len(stage1) == 4 and stage1[-1].value < stage1[0].value
    stage2 = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in stage2) == [5, 6]
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    shape = yaml.safe_load(SMALL.read_text())["model_grid"]["shape"]
    import torch

    patch = torch.zeros(1, 3, 3, shape[1], shape[0])
    assert tuple(model(patch).shape) == (1, 1, 3, shape[1], shape[0])
    record = torch.load(out / "checkpoint_final.pt", weights_only=False)["preprocessing"]
    # resolved: the method that ran on the training subjects' masks (auto resolved), and the
    # image they were computed from, with everything else that shaped the inputs
    assert record["model_grid"] == shape and record["normalise"] == "histeq"
    assert record["brainmask"] in ("fsl", "deepbet", "bet-python")
    assert (record["brainmask_requested"], record["brainmask_reference"]) == ("auto", "ceT1w")
    assert record["adc"]["b_values"] == [0.0, 500.0, 1000.0] and record["adc"]["max_adc"] == 4e-3
    assert record["adc"]["shells_used"] == {"0/500/1000": 2}  # both training subjects' ADC
    assert record["modalities"] == ["T1w", "T2w", "adc"] and record["registration"]["seed"] == 0
    mask = read_json(workdir / "results-small" / "preproc" / "sub-01" / "anat"
                     / "sub-01_desc-brain_mask.json")
    assert (mask["Method"], mask["Reference"]) == (record["brainmask"], "ceT1w")


def test_held_out_subjects_are_synthesized_and_scored(demo_run):
    workdir, *_ = demo_run
    results = workdir / "results-small"
    folder = results / "eval" / "default" / "sub-03"
    synthetic = nib.load(folder / "sub-03_space-model_desc-synthetic_ceT1w.nii.gz")
    assert is_synthetic(synthetic)
    assert synthetic.shape == tuple(yaml.safe_load(SMALL.read_text())["model_grid"]["shape"])
    assert read_json(folder / "sub-03_space-model_desc-synthetic_ceT1w.json")["Synthetic"] is True
    record = read_json(folder / "sub-03_metrics.json")
    assert (record["subject"], record["set"], record["model"]) == ("03", "B", "default")
    anat = results / "preproc" / "sub-03" / "anat"
    again = evaluate_files(folder / "sub-03_space-model_desc-synthetic_ceT1w.nii.gz",
                           anat / "sub-03_space-model_desc-norm_ceT1w.nii.gz",
                           anat / "sub-03_space-model_desc-brain_mask.nii.gz",
                           anat / "sub-03_space-model_desc-tumor_mask.nii.gz")
    assert record["brain"] == again["brain"] and record["tumor"] == again["tumor"]
    assert record["tumor"]["voxels"] > 0  # the expert tumor mask, moved to the model grid
    metrics = read_tsv(results / "eval" / "metrics.tsv")
    assert set(metrics["subject"]) == {"03"}  # sub-01 and sub-02 train; never reported
    assert set(metrics["model"]) == {
        "default", "lossweights-1x1", "default--zero-adc", "default--cascade-T2w-adc",
        "floor-t1", "floor-regression", "cascade-T2w", "cascade-adc"}
    assert "## Set B: brain and tumor" in (results / "eval" / "tables.md").read_text()


def test_enhancement_endpoints_are_tabulated_at_a_stated_threshold(demo_run):
    workdir, *_ = demo_run
    evaluation = workdir / "results-small" / "eval"
    threshold = read_json(evaluation / "default" / "enhancement_threshold.json")
    # the 3-subject demo has no validation subject: delta, fixed a priori, and it says so
    assert threshold["threshold"] == threshold["delta"]
    assert "no validation subjects" in threshold["note"]
    record = read_json(evaluation / "default" / "sub-03" / "sub-03_metrics.json")
    enhancement = record["enhancement"]
    # truth from the phantom's agent map and lesion labels, moved to the model grid
    truth = read_json(workdir / "results-small" / "preproc" / "sub-03" / "anat" /
                      "sub-03_space-model_desc-lesions_dseg.json")
    assert truth["lesions"] and {"type", "enhancing", "scored"} <= set(truth["lesions"][0])
    assert enhancement["lesions"]["scored"] + enhancement["lesions"]["not_scored"] >= 1
    assert 0.0 <= enhancement["auc"] <= 1.0 and enhancement["false_positives"] >= 0
    assert enhancement["lesion_auc"] is None or 0.0 <= enhancement["lesion_auc"] <= 1.0
    assert set(record["brasyn"]) == {"tumor", "outside"}
    assert "enhancement" not in read_json(evaluation / "cascade-T2w" / "sub-03" /
                                          "sub-03_metrics.json")
    metrics = read_tsv(evaluation / "metrics.tsv").set_index("model")
    assert metrics.loc["default", "enh_auc"] != "n/a"
    assert float(metrics.loc["floor-t1", "enh_sensitivity"]) == 0.0  # the T1 enhances nothing
    tables = (evaluation / "tables.md").read_text()
    assert "Enh. AUC" in tables and "fallback: delta" in tables
    assert (evaluation / "lesion_sensitivity.png").is_file()


def test_input_conditions_cascade_and_floors_are_synthesized_as_declared(demo_run):
    workdir, *_ = demo_run
    evaluation = workdir / "results-small" / "eval"

    def sidecar(model, modality="ceT1w"):
        return read_json(evaluation / model / "sub-03" /
                         f"sub-03_space-model_desc-synthetic_{modality}.json")

    assert sidecar("default--zero-adc")["ZeroedInputs"] == ["adc"]
    cascade = sidecar("default--cascade-T2w-adc")
    assert {"sub-03_space-model_desc-synthetic_T2w.nii.gz",
            "sub-03_space-model_desc-synthetic_adc.nii.gz"} <= set(cascade["Sources"])
    assert sidecar("cascade-T2w", "T2w")["Modality"] == "T2w"
    assert sidecar("floor-regression")["Floor"] == "regression"
    t1_floor = nib.load(evaluation / "floor-t1" / "sub-03" /
                        "sub-03_space-model_desc-synthetic_ceT1w.nii.gz")
    assert is_synthetic(t1_floor)
    tables = (evaluation / "paper" / "paper_tables.md").read_text()
    assert "floor" in tables.lower()
    assert (evaluation / "paper" / "fig10_missing_inputs.png").is_file()
    assert (evaluation / "paper" / "fig4_synthesis.png").is_file()


def test_execution_settings_schedule_nothing_and_results_settings_rerun(demo_run, tmp_path):
    workdir, _, _, args = demo_run
    moved = tmp_path / "gpu.yaml"
    moved.write_text(yaml.safe_dump({"train": {"device": "cpu", "workers": 2, "compile": True,
                                               "checkpoint_every_steps": 7, "gpus": 1}}))
    assert dry_run_jobs(workdir, *args, str(moved)) == {}
    changed = tmp_path / "delta.yaml"
    changed.write_text(yaml.safe_dump({"train": {"delta": 0.2}}))
    jobs = dry_run_jobs(workdir, *args, str(changed))
    assert jobs["train_model"] >= 2 and jobs["train_trunk"] >= 1


def test_the_model_is_registered_and_predicts_a_new_patient_in_one_command(demo_run, tmp_path):
    workdir, *_ = demo_run
    results = workdir / "results-small"
    record = read_json(results / "release" / "default.json")
    assert record["model_uri"] == "models:/cesynth-default/1"
    assert record["scores"]["setB_brain_psnr_mean"] > 0
    store = f"sqlite:///{results / 'mlflow.db'}"
    version = mlflow.MlflowClient(store, registry_uri=store).get_model_version(
        "cesynth-default", "1")
    assert version.tags["experiment"] == "default" and "setB_tumor_psnr_mean" in version.tags
    # the release gate passed (the floor waived: no validation subject) and set the champion
    assert release_gate.GATE_SCORE not in record["scores"]
    assert version.tags["gate"] == "passed"
    assert record["gate"]["passed"] and record["champion"]
    assert record["gate"]["reason"].endswith("no champion yet")
    model = mlflow.MlflowClient(store, registry_uri=store).get_registered_model("cesynth-default")
    assert model.aliases == {"champion": 1}
    card = (results / "release" / "default_model_card.md").read_text()
    assert card.startswith("# Model card: cesynth-default, version 1\n")
    for section in ("## Training data", "## Preprocessing", "## Evaluation", "## Release gate",
                    "## Known limitations", "not for diagnosis"):
        assert section in card, section
    assert "| B | test | 1 | 1 |" in card and "| `model_grid` | [32, 40, 32] |" in card
    logged = mlflow.artifacts.download_artifacts(
        run_id=record["run_id"], artifact_path="model_card.md", dst_path=str(tmp_path / "card"),
        tracking_uri=store)
    assert Path(logged).read_text() == card

    raw = workdir / "demo-small" / "bids" / "sub-01"
    out = tmp_path / "sub-01_synthetic.nii.gz"
    result = subprocess.run(
        [CESYNTH, "predict", "--t1", raw / "anat/sub-01_T1w.nii.gz",
         "--t2", raw / "anat/sub-01_T2w.nii.gz", "--dwi", raw / "dwi/sub-01_dwi.nii.gz",
         "--bval", raw / "dwi/sub-01_dwi.bval", "--bvec", raw / "dwi/sub-01_dwi.bvec",
         "--model", "models:/cesynth-default@champion", "--out", out],
        capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": store})
    assert result.returncode == 0, result.stderr
    t1 = nib.load(raw / "anat/sub-01_T1w.nii.gz")
    assert is_synthetic(nib.load(out)) and nib.load(out).shape == t1.shape


# Parity tolerances, measured on sub-03 of the small demo (32 x 40 x 32 model grid of 4 mm
# phantoms, so model-grid voxels of about 8 x 7 x 8 mm). The workflow's model grid spans the
# CE-T1's field of view in the CE-T1's head position; predict's spans the T1's in the T1's, so the
# two sample the same anatomy at points up to half a model voxel apart, and linear resampling of
# such coarse, histogram-equalised images cannot undo that. That grid difference alone (the
# workflow's own registered images prepared on predict's grid and brought back) gives correlation
# 0.970-0.976 and mean absolute difference 0.052-0.059; predict against the workflow measured
# 0.967-0.977 and 0.052-0.065 (T1w, T2w, ADC), and predict against the workflow's images on
# predict's own grid 0.984-0.994 and 0.022-0.036 (what is left: the T1 is not resampled by a
# registration in predict, and its mask is made on the native T1). Hence correlation > 0.95 and
# mean absolute difference < 0.08 for the inputs, and a model-grid brain-mask Dice > 0.9
# (measured 0.942). The demo model (three short epochs) gives a nearly flat image inside the
# brain (sd about 0.001), so a correlation says nothing about it (measured 0.66); its mean
# absolute difference (measured 0.0007) must stay below 0.01 of the [0, 1] range.
PARITY_INPUT_CORRELATION = 0.95
PARITY_INPUT_MAD = 0.08
PARITY_MASK_DICE = 0.9
PARITY_SYNTHETIC_MAD = 0.01


def test_predict_from_raw_scans_gives_the_evaluations_inputs_and_synthesis(demo_run, tmp_path):
    """Issue 10: a reported subject through `cesynth predict` from its raw BIDS scans, with the
    workflow's checkpoint, gives on the model grid the normalised inputs and the synthetic CE-T1
    that the workflow's evaluation gave; the only difference allowed is the reference grid."""
    from cesynth.ants_transforms import ants_transform_to_ras, read_ants_transform
    from cesynth.predict import predict_patient
    from cesynth.predict_synthesis import to_native_grid

    workdir, *_ = demo_run
    results = workdir / "results-small"
    sets = read_tsv(results / "ingest" / "sets.tsv")
    reported = sets[sets["split"] == "test"].sort_values(["set", "scan_id"])  # Set A test first
    subject = str(reported["scan_id"].iloc[0])  # the small demo reports sub-03 (Set B) only
    raw = workdir / "demo-small" / "bids" / f"sub-{subject}"
    out = tmp_path / "predict"
    summary = predict_patient(
        raw / "anat" / f"sub-{subject}_T1w.nii.gz", raw / "anat" / f"sub-{subject}_T2w.nii.gz",
        dwi=raw / "dwi" / f"sub-{subject}_dwi.nii.gz", bval=raw / "dwi" / f"sub-{subject}_dwi.bval",
        bvec=raw / "dwi" / f"sub-{subject}_dwi.bvec",
        model=results / "train" / "default" / "checkpoint_final.pt",
        out=out / "synthetic.nii.gz", out_model_grid=out / "synthetic_space-model.nii.gz",
        work_dir=out / "work")
    # the record is applied as it is: nothing overridden; the one thing predict cannot redo is
    # the paper's mask source (the default brainmask.reference: ceT1w), and it says so
    assert summary["preprocessing"]["overrides"] == {}
    assert list(summary["preprocessing"]["differences"]) == ["BrainMaskReference"]
    assert summary["preprocessing"]["differences"]["BrainMaskReference"]["Used"] == "T1w"

    anat = results / "preproc" / f"sub-{subject}" / "anat"
    # predict's model grid lies in the T1's frame; the workflow's estimated T1 -> CE-T1
    # registration (CE-T1 world -> T1 world) places it in the CE-T1's frame
    ce_to_t1 = ants_transform_to_ras(read_ants_transform(
        anat / f"sub-{subject}_from-T1w_to-ceT1w_xfm.mat"))

    def in_ce_frame(path):
        img = nib.load(path)
        return nib.Nifti1Image(np.asarray(img.dataobj), np.linalg.inv(ce_to_t1) @ img.affine)

    grid_mask = nib.load(anat / f"sub-{subject}_space-model_desc-brain_mask.nii.gz")
    predict_mask = in_ce_frame(out / "work" / "space-model_desc-brain_mask.nii.gz")
    brain = np.asarray(grid_mask.dataobj) > 0
    predict_brain = np.asarray(resample_from_to(predict_mask, grid_mask, order=0).dataobj) > 0
    dice = 2 * np.count_nonzero(brain & predict_brain) / (brain.sum() + predict_brain.sum())
    assert dice > PARITY_MASK_DICE, dice
    region = brain & predict_brain

    def compare(workflow_path, predict_path):
        """Correlation and mean absolute difference inside both brains, on the workflow's grid
        (predict's image resampled linearly, weighted by its brain mask, as predict does)."""
        ours = np.asarray(nib.load(workflow_path).dataobj, dtype=np.float64)[region]
        theirs = to_native_grid(in_ce_frame(predict_path), predict_mask, grid_mask,
                                grid_mask).astype(np.float64)[region]
        return float(np.corrcoef(ours, theirs)[0, 1]), float(np.abs(ours - theirs).mean())

    for modality in ("T1w", "T2w", "adc"):
        correlation, mad = compare(anat / f"sub-{subject}_space-model_desc-norm_{modality}.nii.gz",
                                   out / "work" / f"{modality}_space-model_desc-norm.nii.gz")
        assert correlation > PARITY_INPUT_CORRELATION, (modality, correlation)
        assert mad < PARITY_INPUT_MAD, (modality, mad)
    evaluated = (results / "eval" / "default" / f"sub-{subject}"
                 / f"sub-{subject}_space-model_desc-synthetic_ceT1w.nii.gz")
    _, mad = compare(evaluated, out / "synthetic_space-model.nii.gz")
    assert mad < PARITY_SYNTHETIC_MAD, mad


def test_a_rerun_has_nothing_to_do(demo_run):
    workdir, _, _, args = demo_run
    result = snakemake(workdir, "--dry-run", *args)
    assert "Nothing to be done" in result.stdout + result.stderr


# ---------------------------------------------------------------- faults in a finished run
# Each test works on a copy of the finished demo (modification times kept, so Snakemake sees it
# finished) and compares with what the uninterrupted demo run wrote.

TRUNK_STEPS = 4  # the demo's trunk: 2 epochs x (2 training subjects x 3 patches / batch 3)


def copy_of_demo(workdir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "demo"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    for name, weights in expected.items():
        assert torch.equal(found[name], weights), name  # bit for bit, not only close


def _steps_done(latest: Path) -> int:
    """The steps in the checkpoint the training job is rewriting (read while it writes: not
    through read_checkpoint, whose check would take a record just renewed for damage)."""
    try:
        return torch.load(latest, map_location="cpu", weights_only=False)["global_step"]
    except (OSError, RuntimeError, EOFError):
        return -1


def _training_process(workdir: Path) -> int | None:
    """The PID of the training job Snakemake runs in ``workdir`` (its script, its folder)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            folder = os.readlink(entry / "cwd")
        except OSError:
            continue
        if folder == str(workdir) and any(a.endswith(b".train_model.py") for a in arguments):
            return int(entry.name)
    return None


def _kill_training_after(step: int, latest: Path, workdir: Path, signum: int,
                         run: subprocess.Popen) -> None:
    """Send ``signum`` to the training job once its checkpoint says ``step`` steps are done."""
    def alive() -> None:
        assert run.poll() is None, run.communicate()

    found: dict[str, int | None] = {}

    def reached() -> bool:
        found["pid"] = _training_process(workdir)
        return found["pid"] is not None and _steps_done(latest) >= step

    wait_until(reached, still_running=alive)
    os.kill(found["pid"], signum)


def _interrupted_run(copy: Path, command: list[str], latest: Path, step: int,
                     signum: int) -> int:
    """Run the workflow in ``copy`` and send ``signum`` to its training job once ``step`` steps
    are done; it must fail, its checkpoint saved at or after ``step``. Returns that step."""
    run = subprocess.Popen([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(copy),
                            *command], env=workflow_environment(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    _kill_training_after(step, latest, copy, signum, run)
    output, _ = run.communicate(timeout=600)
    assert run.returncode != 0, output[-3000:]
    saved = read_checkpoint(latest)["global_step"]
    assert step <= saved <= TRUNK_STEPS  # SIGTERM saves after the step under way
    assert not latest.with_name("checkpoint_final.pt").exists()
    return saved


def test_a_training_job_killed_at_random_steps_resumes_to_the_same_weights(demo_run, tmp_path):
    """SIGKILL (the out-of-memory killer) at one seeded random step, then SIGTERM (SLURM's time
    limit, scancel) at a later one; the user's rerun ends with the uninterrupted weights."""
    workdir, _, _, args = demo_run
    copy = copy_of_demo(workdir, tmp_path)
    trunk = sorted((copy / "results-small" / "train" / "trunks").iterdir())[0]
    final, latest = trunk / "checkpoint_final.pt", trunk / CHECKPOINT_LATEST
    uninterrupted = _weights(final)
    shutil.rmtree(trunk)
    every_step = tmp_path / "every-step.yaml"  # an execution setting: reruns nothing
    every_step.write_text(yaml.safe_dump({"train": {"checkpoint_every_steps": 1}}))
    command = [*args, str(every_step), "--cores", "2", "--", str(final.relative_to(copy))]
    rng = np.random.default_rng(26)

    # the trunk has 4 steps: SIGKILL after step 1 or 2, SIGTERM once the rerun did one more
    killed_at = _interrupted_run(copy, command, latest, int(rng.integers(1, 3)), signal.SIGKILL)
    _interrupted_run(copy, command, latest, min(killed_at + 1, TRUNK_STEPS - 1), signal.SIGTERM)

    snakemake(copy, *command)  # the user's rerun: the job resumes from its checkpoint
    resumed = read_checkpoint(final)
    assert resumed["global_step"] == TRUNK_STEPS
    assert_same_weights(resumed["model"], uninterrupted)


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("error: ")]


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def test_damaged_results_are_named_never_used_and_rebuilt_by_the_rerun(demo_run, tmp_path):
    workdir, _, _, args = demo_run
    copy = copy_of_demo(workdir, tmp_path)
    results = copy / "results-small"
    default = results / "train" / "default"
    uninterrupted = _weights(default / "checkpoint_final.pt")
    for trunk in (results / "train" / "trunks").iterdir():  # whichever the default model uses
        _truncate(trunk / "checkpoint_final.pt")
    for name in ("checkpoint_final.pt", "checkpoint_best.pt", "training_curve.png"):
        (default / name).unlink()  # the default model is to be retrained on its trunk
    target = str((default / "checkpoint_final.pt").relative_to(copy))

    stopped = snakemake(copy, "--cores", "2", *args, "--", target, check=False)
    assert stopped.returncode != 0
    (line,) = error_lines(stopped)
    damaged = copy / line.split(": ")[1]
    assert damaged.parent.parent.name == "trunks" and damaged.name == "checkpoint_final.pt"
    assert line.endswith("(truncated or overwritten); moved aside as "
                         "checkpoint_final.pt.damaged: rerun the workflow to rebuild it"), line
    assert not damaged.exists() and damaged.with_name("checkpoint_final.pt.damaged").exists()

    snakemake(copy, "--cores", "2", *args, "--", target)  # the user's rerun rebuilds the trunk
    assert_same_weights(read_checkpoint(default / "checkpoint_final.pt")["model"], uninterrupted)

    # a model-grid image its cache was made from: truncated, and the cache to be made again
    image = preproc(results, "01", "anat", "space-model_desc-norm_T1w.nii.gz")
    original = nib.load(image).get_fdata()
    _truncate(image)
    cache = results / "train" / "cache" / "sub-01"
    cached = np.load(cache / "sub-01_inputs.npy")
    shutil.rmtree(cache)
    target = str(cache.relative_to(copy))
    stopped = snakemake(copy, "--cores", "2", *args, "--", target, check=False)
    assert stopped.returncode != 0
    (line,) = error_lines(stopped)
    assert line.startswith(f"error: {image.relative_to(copy)}: ") and "moved aside" in line, line
    snakemake(copy, "--cores", "2", *args, "--", target)
    assert np.array_equal(nib.load(image).get_fdata(), original)
    assert np.array_equal(np.load(cache / "sub-01_inputs.npy"), cached)


def test_the_snakemake_report_gathers_qc_training_evaluation_and_release(demo_run, tmp_path):
    workdir, _, _, args = demo_run
    report = tmp_path / "report.zip"
    snakemake(workdir, *args, "--report", str(report))
    with zipfile.ZipFile(report) as archive:
        names = {Path(name).name for name in archive.namelist()}
        index = next(n for n in archive.namelist() if n.endswith("report.html"))
        html = archive.read(index).decode()
    montages = {f"sub-{subject}_desc-montage.png" for subject in SUBJECTS}
    assert montages | {"training_curve.png", "default_model_card.md", "summary.tsv",
                       "ttests.tsv", "fig4_synthesis.png", "registration.tsv",
                       "lesion_sensitivity.png", "lesion_sensitivity.tsv",
                       "lesion_panels.png"} <= names
    for category in ("Quality control", "Training", "Evaluation", "Release"):
        assert category in html, category


def test_new_subjects_rerun_only_what_depends_on_them(demo_run, tmp_path):
    workdir, _, _, args = demo_run
    bids = workdir / "demo-small" / "bids"
    config = tmp_path / "as_dataset.yaml"
    config.write_text(yaml.safe_dump({"demo": {"enabled": False}}))
    as_dataset = [*args, str(config)]
    assert dry_run_jobs(workdir, *as_dataset) == {}

    extra = tmp_path / "extra"
    built = subprocess.run([CESYNTH, "phantom", "--out",
                            str(extra), "--subjects", "5", "--set-b", "0", "--voxel-mm", "4"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr

    def add(subject):
        shutil.copytree(extra / f"sub-{subject}", bids / f"sub-{subject}")
        shutil.copytree(extra / f"derivatives/phantom/sub-{subject}",
                        bids / f"derivatives/phantom/sub-{subject}")
        with open(bids / "participants.tsv", "a") as participants:
            participants.write(f"sub-{subject}\tA\n")

    add("04")  # by its ID hash a Set A *test* subject: reported, never trained on
    jobs = dry_run_jobs(workdir, *as_dataset)
    preprocessing = {"validate_subject": 1, "fit_adc": 1, "mask_brain": 1,
                     "register_anat_to_cet1w": 2, "register_dwi_to_cet1w": 1,
                     "resample_mask_to_model_grid": 1, "normalise_to_model_grid": 4,
                     "check_image_quality": 4, "plot_qc_montage": 1}
    # every model synthesizes the new reported subject; nothing is retrained
    evaluation = {"synthesize_evaluation_subject": 4, "synthesize_input_condition": 2,
                  "synthesize_floor": 2, "score_evaluation_subject": 8,
                  "tabulate_evaluation": 1, "tabulate_paper": 1, "plot_synthesis_panel": 1,
                  "resample_enhancing_truth_to_model_grid": 1, "plot_lesion_sensitivity": 1,
                  "plot_lesion_panels": 1, "release_model": 1}
    gathering = {"assign_sets": 1, "tabulate_qc": 5, "all": 1}
    assert jobs == {**preprocessing, **evaluation, **gathering}

    add("05")  # a Set A *training* subject: its cache, and every model is retrained
    jobs = dry_run_jobs(workdir, *as_dataset)
    assert jobs["cache_training_subject"] == 1 and jobs["fit_voxel_regression"] == 1
    assert jobs["train_model"] == 4 and jobs["train_trunk"] == 3  # 2 loss-weight points share


def test_a_bad_subject_stops_alone_with_one_line(tmp_path):
    bids = tmp_path / "bids"
    subprocess.run([CESYNTH, "phantom", "--out", str(bids), "--subjects", "2", "--set-b", "0",
                    "--voxel-mm", "4"], check=True, capture_output=True)
    bval = bids / "sub-02/dwi/sub-02_dwi.bval"
    bval.write_text(" ".join(bval.read_text().split()[:-1]) + "\n")
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in bids.rglob("*") if p.is_file()}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"bids_dir": str(bids), "results_dir": str(tmp_path / "out"),
                                      "demo": {"enabled": False}}))
    result = snakemake(tmp_path, str(tmp_path / "out/ingest/sets.tsv"), "--cores", "2",
                       "--keep-going", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert "error: sub-02: sub-02_dwi.bval: 6 b-values for 7 volumes" in result.stderr
    assert (tmp_path / "out/qc/ingest/sub-01.json").is_file()
    table = read_tsv(tmp_path / "out/qc/ingest.tsv").set_index("scan_id")
    assert table.loc["01", "status"] == "included"
    assert table.loc["02", "status"] == "excluded"
    assert "6 b-values for 7 volumes" in table.loc["02", "reason"]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in bids.rglob("*") if p.is_file()}
    assert after == digest


def test_a_subject_missing_a_declared_flair_stops_alone_with_one_line(tmp_path):
    """train.modalities names FLAIR: sub-02, whose FLAIR is missing, stops at validation with
    one line naming the file, and sub-01 goes on (--keep-going)."""
    bids = tmp_path / "bids"
    subprocess.run([CESYNTH, "phantom", "--out", str(bids), "--subjects", "2", "--set-b", "0",
                    "--voxel-mm", "4", "--flair"], check=True, capture_output=True)
    (bids / "sub-02/anat/sub-02_FLAIR.nii.gz").unlink()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bids_dir": str(bids), "results_dir": str(tmp_path / "out"), "demo": {"enabled": False},
        "train": {"modalities": ["T1w", "T2w", "adc", "FLAIR"]}}))
    result = snakemake(tmp_path, str(tmp_path / "out/ingest/sets.tsv"), "--cores", "2",
                       "--keep-going", "--configfile", str(config), check=False)
    assert result.returncode != 0
    line = ("error: sub-02: sub-02_FLAIR.nii.gz: missing (a model's inputs, train.modalities or "
            "an experiment's, include FLAIR; add it, or list 02 in ingest.exclude_subjects)")
    assert line in result.stderr
    table = read_tsv(tmp_path / "out/qc/ingest.tsv").set_index("scan_id")
    assert table.loc["01", "status"] == "included" and "FLAIR" in table.loc["01", "modalities"]
    assert table.loc["02", "status"] == "excluded"
    assert "sub-02_FLAIR.nii.gz: missing" in table.loc["02", "reason"]


TWO_SHELL_SUBJECTS = ("02", "03")  # 02 trains the model, 03 (Set B) is evaluated


def drop_shell(bids: Path, subject: str, b_value: float) -> None:
    """Remove one shell from a subject's BIDS DWI and its gradient files (b = 0/1000 left)."""
    stem = bids / f"sub-{subject}" / "dwi" / f"sub-{subject}_dwi"
    img = nib.load(f"{stem}.nii.gz")
    bvals = np.loadtxt(f"{stem}.bval", ndmin=1)
    bvecs = np.loadtxt(f"{stem}.bvec", ndmin=2)
    keep = np.abs(bvals - b_value) > 50
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., keep], img.affine, img.header),
             f"{stem}.nii.gz")
    np.savetxt(f"{stem}.bval", bvals[keep][np.newaxis], fmt="%g")
    np.savetxt(f"{stem}.bvec", bvecs[:, keep], fmt="%.6f")


@pytest.fixture(scope="module")
def two_shell_run(tmp_path_factory):
    """The small demo as a dataset in which a training subject and the evaluated subject have
    the commonest clinical DWI, b = 0/1000 (issue 24), run to evaluation and release."""
    workdir = tmp_path_factory.mktemp("two-shell")
    bids, results = workdir / "bids", workdir / "results"
    subprocess.run([CESYNTH, "phantom", "--out", str(bids), "--subjects", "3", "--set-b", "1",
                    "--voxel-mm", "4", "--seed", "7"], check=True, capture_output=True)
    for subject in TWO_SHELL_SUBJECTS:
        drop_shell(bids, subject, 500)
    config = workdir / "dataset.yaml"
    config.write_text(yaml.safe_dump({
        "bids_dir": str(bids), "results_dir": str(results), "demo": {"enabled": False},
        "release": {"gates": {"require_score": False}}}))
    targets = [results / "eval" / "metrics.tsv", results / "qc" / "adc.tsv",
               results / "release" / "default.json"]
    snakemake(workdir, "--cores", "2", "--configfile", str(SMALL), str(config), "--",
              *map(str, targets))
    return results


def test_a_two_shell_subject_runs_to_evaluation_with_its_shells_recorded(two_shell_run):
    results = two_shell_run
    sets = read_tsv(results / "ingest" / "sets.tsv").set_index("scan_id")
    assert sets.loc["02", "split"] == "train" and sets.loc["03", "split"] == "test"
    adc = read_tsv(results / "qc" / "adc.tsv").set_index("scan_id")
    assert adc["b_values"].to_dict() == {"01": "0/500/1000", "02": "0/1000", "03": "0/1000"}
    assert adc["preferred_shells"].to_dict() == {"01": "True", "02": "False", "03": "False"}
    log = (results / "logs" / "fit_adc" / "sub-02.log").read_text()
    assert log.count("ADC fitted from b = 0/1000 s/mm2") == 1  # warned once
    metrics = read_tsv(results / "eval" / "metrics.tsv")
    evaluated = metrics[(metrics["subject"] == "03") & (metrics["model"] == "default")]
    assert len(evaluated) == 1 and np.isfinite(float(evaluated["brain_psnr"].iloc[0]))
    import torch

    record = torch.load(results / "train" / "default" / "checkpoint_final.pt",
                        weights_only=False)["preprocessing"]
    # the training subjects (01 and 02): one fitted from the method's shells, one from 0/1000
    assert record["adc"]["shells_used"] == {"0/500/1000": 1, "0/1000": 1}
    card = (results / "release" / "default_model_card.md").read_text()
    assert "| `adc.shells_used.0/1000` | 1 |" in card


def write_subject_as_dicom(bids: Path, subject: str, out: Path) -> None:
    """A phantom subject's four modalities as DICOM series (as a scanner would export them)."""
    from helpers.dicom_writer import write_series_from_volume

    series = {"MPRAGE pre": "anat/{s}_T1w", "MPRAGE post Gd": "anat/{s}_ce-gadolinium_T1w",
              "T2 TSE axial": "anat/{s}_T2w", "DWI trace": "dwi/{s}_dwi"}
    for number, (description, stem) in enumerate(series.items(), start=1):
        path = bids / f"sub-{subject}" / (stem.format(s=f"sub-{subject}") + ".nii.gz")
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        scaled = np.round(data / data.max() * 4000).astype(np.uint16)
        diffusion = {}
        if stem.startswith("dwi"):
            gradient = str(path).removesuffix(".nii.gz")
            diffusion = {"b_values": np.loadtxt(f"{gradient}.bval"),
                         "b_vectors": np.loadtxt(f"{gradient}.bvec").T}
        # roles come from the tags: the T2 needs a T2's TR and TE (the writer's are a T1's)
        tags = ({"RepetitionTime": 4000.0, "EchoTime": 100.0, "ScanningSequence": "SE"}
                if description.startswith("T2") else {})
        write_series_from_volume(scaled, img.affine, out / f"series{number}",
                                 series_description=description, series_number=number,
                                 study_uid=f"1.2.826.0.1.3680043.8.498.{int(subject)}",
                                 tags=tags, **diffusion)


def test_dicom_input_is_converted_validated_and_split(tmp_path):
    phantom_bids = tmp_path / "phantom"
    subprocess.run([CESYNTH, "phantom", "--out", str(phantom_bids), "--subjects", "2", "--set-b",
                    "0", "--voxel-mm", "4"], check=True, capture_output=True)
    dicom_dir = tmp_path / "dicom"
    for subject in ("01", "02"):
        write_subject_as_dicom(phantom_bids, subject, dicom_dir / subject)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bids_dir": str(tmp_path / "converted"), "dicom_dir": str(dicom_dir),
        "results_dir": str(tmp_path / "out"), "demo": {"enabled": False}}))
    snakemake(tmp_path, str(tmp_path / "out/ingest/sets.tsv"), "--cores", "2",
              "--configfile", str(config))
    for name in ("anat/sub-01_T1w.nii.gz", "anat/sub-01_ce-gadolinium_T1w.nii.gz",
                 "anat/sub-01_T2w.nii.gz", "dwi/sub-01_dwi.nii.gz", "dwi/sub-01_dwi.bval"):
        assert (tmp_path / "converted" / "sub-01" / name).is_file(), name
    assert (tmp_path / "out/qc/ingest/sub-01_series.tsv").is_file()  # the roles and why
    sets = read_tsv(tmp_path / "out/ingest/sets.tsv")
    assert sets["scan_id"].tolist() == ["01", "02"]
    assert sets["has_dwi"].tolist() == ["True", "True"]
    from helpers.dicom_writer import FAKE_IDENTIFIERS

    outputs = [*(tmp_path / "converted").rglob("*"), *(tmp_path / "out").rglob("*")]
    for path in outputs:
        if path.is_file() and path.suffix in (".json", ".tsv", ".log"):
            text = path.read_text()
            assert not any(value in text for value in FAKE_IDENTIFIERS.values()), path
