"""Unit tests of cesynth.release: releasing a model to a real MLflow registry and finding it again.

One tiny CE-T1 model is trained once (the smallest settings the other tests use); the cascade
checkpoints (T1 -> T2, T1 -> ADC) and the faulty ones are made from it by rewriting its settings,
weights or preprocessing record. Every store is a real SQLite MLflow store under the test's
temporary folder; nothing of MLflow is mocked.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers.checkpoints import cached_training_subject
from helpers.workflow import CESYNTH
from scipy import stats

from cesynth import tracking
from cesynth.checkpoint import read_checkpoint
from cesynth.evaluation_tables import format_mean_sd, summarise
from cesynth.inference import load_generator
from cesynth.ingest_report import write_sets_table
from cesynth.io import InputError, read_tsv, write_json, write_tsv
from cesynth.model_card import MODEL_CARD_ARTIFACT, log_model_card, write_model_card
from cesynth.models import model_from_settings
from cesynth.release import (
    CASCADE_DIR,
    CASCADE_TARGETS,
    CHECKPOINT_ARTIFACTS,
    check_cascade,
    register_release,
    resolve_cascade,
    resolve_model,
)
from cesynth.release_gate import (
    CHAMPION_ALIAS,
    GATE_REASON_TAG,
    GATE_SCORE,
    GATE_TAG,
    Champion,
    ReleaseGates,
    apply_gate,
    gate_decision,
    read_champion,
    validation_brain_psnr,
)
from cesynth.settings import TrainSettings
from cesynth.splits import SplitFractions
from cesynth.tracking import init_store
from cesynth.train import train

GRID = [32, 40, 32]
PREPROCESSING = {"model_grid": GRID, "normalise": "histeq", "brainmask": "auto"}
SETTINGS = {
    "model": "hrfcn3d", "width_multiplier": 1 / 16, "blocks_per_module": 1,
    "stages": [[1, 1.0, 1.0, 1.0, 3e-3]], "patches_per_subject": 3,
    "checkpoint_every_steps": 0, "seed": 5, "device": "cpu",
}
CASCADE_STAGES = [[1, 1.0, 1.0, 0.0, 3e-3]]
NAME = "cesynth-rel"
SCORES = {GATE_SCORE: 28.123456789, "setA_brain_psnr_mean": 17.5,
          "setB_brain_psnr_mean": float("nan"), "setB_tumor_mae_mean": float("inf"),
          "setB_brain_ssim_mean": 0.5}
TAGS = {"experiment": "default", "checkpoint": "final"}


# ---------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def client_of(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_paths(uri: str, run_id: str, folder: str | None = None) -> list[str]:
    return sorted(a.path for a in client_of(uri).list_artifacts(run_id, folder))


def remake(source: Path, path: Path, *, modalities: list[str] | None = None,
           target: str | None = None, preprocessing: dict | None | str = "keep") -> Path:
    """A checkpoint made from ``source`` with other inputs/target (fresh weights that fit them)
    or another preprocessing record (None: no record, as before it existed)."""
    state = torch.load(source, map_location="cpu", weights_only=False)
    settings = dict(state["settings"])
    if modalities is not None or target is not None:
        settings["modalities"] = modalities or settings["modalities"]
        settings["target"] = target or settings["target"]
        settings["stages"] = CASCADE_STAGES
        torch.manual_seed(0)
        state["settings"] = TrainSettings.from_dict(settings).to_dict()
        state["model"] = model_from_settings(TrainSettings.from_dict(settings)).state_dict()
    if preprocessing is None:
        del state["preprocessing"]
    elif preprocessing != "keep":
        state["preprocessing"] = preprocessing
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def refused(call, *args, **kwargs) -> InputError:
    """The InputError ``call`` raises; its message must be one line."""
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)
    assert str(caught.value) == f"{caught.value.who}: {caught.value.problem}"
    return caught.value


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The training folder of a tiny CE-T1 model (checkpoint_final/best/latest.pt)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("training")
    cache = cached_training_subject(root, np.random.default_rng(0))
    summary = train([cache], [], root / "run", TrainSettings.from_dict(SETTINGS),
                    preprocessing=PREPROCESSING)
    return Path(summary["checkpoint_final"]).parent


@pytest.fixture(scope="module")
def final(trained) -> Path:
    return trained / "checkpoint_final.pt"


@pytest.fixture(scope="module")
def best(trained) -> Path:
    return trained / "checkpoint_best.pt"


@pytest.fixture(scope="module")
def cascades(final, tmp_path_factory) -> dict[str, Path]:
    """T1 -> T2 and T1 -> ADC checkpoints with the CE-T1 model's grid and normalisation."""
    root = tmp_path_factory.mktemp("cascades")
    return {t: remake(final, root / t / "checkpoint_final.pt", modalities=["T1w"], target=t)
            for t in CASCADE_TARGETS}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    init_store(uri)
    return uri


@pytest.fixture(scope="module")
def releases(store, final, best, cascades) -> dict:
    """Two versions of NAME: v1 the final checkpoint with both cascades, scores and tags
    (alias ``champion``); v2 the best checkpoint alone. Cascades given in reverse order."""
    with tracking.stage_run("release_model", {"experiment": "default"}, uri=store) as run:
        first = register_release(final, NAME, scores=SCORES, tags=TAGS,
                                 cascade={"adc": cascades["adc"], "T2w": cascades["T2w"]})
        active_run_id = run.info.run_id
    with tracking.stage_run("release_model", {"experiment": "default"}, uri=store):
        second = register_release(best, NAME, tags={**TAGS, "checkpoint": "best"})
    client_of(store).set_registered_model_alias(NAME, "champion", "1")
    return {"first": first, "second": second, "active_run_id": active_run_id}


@pytest.fixture(scope="module")
def other_runs(store, trained) -> dict:
    """Model versions made by hand: a training run holding all three checkpoints, a run
    without any checkpoint, a version logged by no run, a registered model without versions."""
    client = client_of(store)
    experiment_id = init_store(store)
    training = client.create_run(experiment_id).info.run_id
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"):
        client.log_artifact(training, str(trained / name))
    client.set_terminated(training)
    client.create_registered_model("cesynth-training")
    client.create_model_version("cesynth-training", f"runs:/{training}/model", run_id=training)

    empty = client.create_run(experiment_id).info.run_id
    client.log_artifact(empty, str(trained / "train_metrics.json"))
    client.set_terminated(empty)
    client.create_registered_model("cesynth-empty")
    client.create_model_version("cesynth-empty", f"runs:/{empty}/model", run_id=empty)

    client.create_registered_model("cesynth-runless")
    client.create_model_version("cesynth-runless", str(trained))
    client.create_registered_model("cesynth-unversioned")
    return {"training": training, "empty": empty}


# ---------------------------------------------------------------- constants


def test_release_constants():
    assert CHECKPOINT_ARTIFACTS == ("checkpoint_final.pt", "checkpoint_best.pt")
    assert CASCADE_DIR == "cascade"
    assert CASCADE_TARGETS == ("T2w", "adc")


# ---------------------------------------------------------------- register_release


def test_register_release_returns_the_new_version(releases, final, best, cascades):
    first, second = releases["first"], releases["second"]
    assert first == {"name": NAME, "version": 1, "model_uri": f"models:/{NAME}/1",
                     "run_id": releases["active_run_id"], "checkpoint_sha256": sha256(final),
                     "cascade": {"T2w": sha256(cascades["T2w"]), "adc": sha256(cascades["adc"])}}
    assert list(first["cascade"]) == ["T2w", "adc"]  # CASCADE_TARGETS order, not the caller's
    assert second["version"] == 2 and second["model_uri"] == f"models:/{NAME}/2"
    assert second["checkpoint_sha256"] == sha256(best) and second["cascade"] == {}
    assert second["run_id"] != first["run_id"]


def test_register_release_tags_the_version(releases, store, final, cascades):
    version = client_of(store).get_model_version(NAME, "1")
    assert version.run_id == releases["first"]["run_id"]
    assert version.tags == {
        GATE_SCORE: "28.1235", "setA_brain_psnr_mean": "17.5",  # finite ones only
        "setB_brain_ssim_mean": "0.5",
        "experiment": "default", "checkpoint": "final",
        "cascade": "T2w,adc",
        "cascade_T2w_sha256": sha256(cascades["T2w"]),
        "cascade_adc_sha256": sha256(cascades["adc"]),
        "checkpoint_sha256": sha256(final),
        "output": "synthetic images, not for diagnosis without review"}
    second = client_of(store).get_model_version(NAME, "2")
    assert second.tags["checkpoint"] == "best"
    assert not any(key.startswith("cascade") for key in second.tags)  # no cascade, no tags


def test_register_release_logs_finite_scores_as_run_metrics(releases, store):
    run = client_of(store).get_run(releases["first"]["run_id"])
    assert run.data.metrics == pytest.approx({GATE_SCORE: 28.123456789,
                                              "setA_brain_psnr_mean": 17.5,
                                              "setB_brain_ssim_mean": 0.5})
    assert client_of(store).get_run(releases["second"]["run_id"]).data.metrics == {}


def test_register_release_uploads_the_checkpoint_and_cascades(releases, store, final, best,
                                                              cascades, tmp_path):
    first, second = releases["first"]["run_id"], releases["second"]["run_id"]
    logged = artifact_paths(store, first)
    assert "checkpoint_final.pt" in logged and "checkpoint_best.pt" not in logged
    assert CASCADE_DIR in logged
    assert artifact_paths(store, first, CASCADE_DIR) == ["cascade/T2w.pt", "cascade/adc.pt"]
    for target, path in cascades.items():
        local = mlflow.artifacts.download_artifacts(
            run_id=first, artifact_path=f"cascade/{target}.pt", dst_path=str(tmp_path / target),
            tracking_uri=store)
        assert Path(local).read_bytes() == path.read_bytes()
    logged = artifact_paths(store, second)
    assert "checkpoint_best.pt" in logged and "checkpoint_final.pt" not in logged
    assert CASCADE_DIR not in logged


def test_register_release_logs_the_network_as_a_pytorch_model(releases, store):
    mlflow.set_tracking_uri(store)  # as stage_run leaves it; models:/ is read from there
    model = mlflow.pytorch.load_model(f"models:/{NAME}/2")
    example = np.zeros((1, 3, 3, GRID[1], GRID[0]), dtype=np.float32)
    expected = load_generator(resolve_model(f"models:/{NAME}/2", tracking_uri=store)).model
    with torch.no_grad():
        torch.testing.assert_close(model(torch.from_numpy(example)),
                                   expected(torch.from_numpy(example)))
    info = mlflow.models.get_model_info(f"models:/{NAME}/2")
    assert info.signature is not None
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (
        -1, 3, 3, GRID[1], GRID[0])


def test_register_release_of_one_cascade_tags_only_it(store, final, cascades):
    with tracking.stage_run("release_model", {"experiment": "adc"}, uri=store):
        record = register_release(final, "cesynth-adc-only", cascade={"adc": cascades["adc"]})
    assert record["version"] == 1 and record["cascade"] == {"adc": sha256(cascades["adc"])}
    tags = client_of(store).get_model_version("cesynth-adc-only", "1").tags
    assert tags["cascade"] == "adc" and "cascade_T2w_sha256" not in tags
    assert artifact_paths(store, record["run_id"], CASCADE_DIR) == ["cascade/adc.pt"]


def _refused_release(store, name, checkpoint, **kwargs) -> InputError:
    """The InputError of a release into ``store``; the run must hold no artifacts and no
    version may be registered."""
    with pytest.raises(InputError) as caught, \
            tracking.stage_run("release_model", {"experiment": name}, uri=store) as run:
        run_id = run.info.run_id
        register_release(checkpoint, name, **kwargs)
    assert "\n" not in str(caught.value)
    assert artifact_paths(store, run_id) == []
    assert client_of(store).search_registered_models(f"name = '{name}'") == []
    assert client_of(store).get_run(run_id).data.metrics == {}
    return caught.value


def test_release_without_preprocessing_record_is_refused(store, final, tmp_path):
    old = remake(final, tmp_path / "checkpoint_final.pt", preprocessing=None)
    err = _refused_release(store, "cesynth-old", old, scores={"a": 1.0})
    assert err.who == str(old)
    assert err.problem == ("checkpoint has no preprocessing record; retrain it with the workflow "
                           "to release it")


def test_release_of_a_file_that_is_no_checkpoint_is_refused(store, tmp_path):
    missing = tmp_path / "checkpoint_final.pt"
    err = _refused_release(store, "cesynth-missing", missing)
    assert err.who == str(missing) and err.problem == "checkpoint not found"
    junk = tmp_path / "checkpoint_best.pt"
    junk.write_text("not a checkpoint")
    err = _refused_release(store, "cesynth-junk", junk)
    assert err.who == str(junk) and err.problem


def test_release_with_an_unknown_cascade_target_is_refused(store, final, cascades):
    err = _refused_release(store, "cesynth-flair", final,
                           cascade={"T2w": cascades["T2w"], "flair": cascades["adc"]})
    assert err.who == "cascade flair"
    assert err.problem == "unknown cascade target; expected one of T2w, adc"


def test_release_with_a_cascade_for_another_target_is_refused(store, final, cascades):
    err = _refused_release(store, "cesynth-swapped", final, cascade={"adc": cascades["T2w"]})
    assert err.who == str(cascades["T2w"])
    assert err.problem == "not a T1 -> adc cascade model (it takes T1w to T2w)"


def test_release_with_the_ce_t1_model_as_cascade_is_refused(store, final, best):
    err = _refused_release(store, "cesynth-self", final, cascade={"T2w": best})
    assert err.who == str(best)
    assert err.problem == "not a T1 -> T2w cascade model (it takes T1w,T2w,adc to ceT1w)"


def test_release_with_a_cascade_on_another_grid_is_refused(store, final, cascades, tmp_path):
    other = remake(cascades["adc"], tmp_path / "adc.pt",
                   preprocessing={**PREPROCESSING, "model_grid": [48, 48, 32]})
    err = _refused_release(store, "cesynth-grid", final,
                           cascade={"T2w": cascades["T2w"], "adc": other})
    assert err.who == str(other)
    assert err.problem.startswith("cascade model for adc was trained on model grid [48, 48, 32] "
                                  "with histeq normalisation, the CE-T1 model on [32, 40, 32] "
                                  "with histeq")


def test_release_with_a_missing_cascade_file_is_refused(store, final, tmp_path):
    missing = tmp_path / "T2w.pt"
    err = _refused_release(store, "cesynth-nocascade", final, cascade={"T2w": missing})
    assert err.who == str(missing) and err.problem == "checkpoint not found"


def test_release_of_a_checkpoint_with_another_name_can_be_resolved(store, trained, tmp_path):
    # checkpoint_latest.pt is a checkpoint of cesynth.train as well; whatever register_release
    # accepts must come back through the model URI it returns (or be refused up front).
    latest = trained / "checkpoint_latest.pt"
    name = "cesynth-latest"
    try:
        with tracking.stage_run("release_model", {"experiment": "latest"}, uri=store):
            record = register_release(latest, name)
    except InputError:
        assert client_of(store).search_registered_models(f"name = '{name}'") == []
        return
    path = resolve_model(record["model_uri"], tmp_path, tracking_uri=store)
    assert path.read_bytes() == latest.read_bytes()


# ---------------------------------------------------------------- resolve_model


def test_resolve_model_returns_a_checkpoint_path_as_is(final, best):
    assert resolve_model(final) == final
    assert resolve_model(str(best)) == best
    assert resolve_model(final, "/nonexistent/never-created") == final


@pytest.mark.parametrize(("reference", "name", "checkpoint"), [
    ("models:/cesynth-rel/1", "checkpoint_final.pt", "final"),
    ("models:/cesynth-rel/2", "checkpoint_best.pt", "best"),
    ("models:/cesynth-rel@champion", "checkpoint_final.pt", "final"),
    ("models:/cesynth-rel/champion", "checkpoint_final.pt", "final"),
    ("models:/cesynth-rel/latest", "checkpoint_best.pt", "best"),
    ("models:/cesynth-rel/latest/", "checkpoint_best.pt", "best"),
    ("runs:/{first}/model", "checkpoint_final.pt", "final"),
    ("runs:/{second}", "checkpoint_best.pt", "best"),
])
def test_resolve_model_downloads_the_releases_checkpoint(reference, name, checkpoint, releases,
                                                         store, trained, tmp_path):
    uri = reference.format(first=releases["first"]["run_id"],
                           second=releases["second"]["run_id"])
    path = resolve_model(uri, tmp_path / "new" / "folder", tracking_uri=store)
    assert path == tmp_path / "new" / "folder" / name
    assert path.read_bytes() == (trained / f"checkpoint_{checkpoint}.pt").read_bytes()


def test_resolve_model_takes_the_final_checkpoint_of_a_training_run(other_runs, store, trained,
                                                                    tmp_path):
    assert artifact_paths(store, other_runs["training"]) == [
        "checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_latest.pt"]
    for uri in ("models:/cesynth-training/1", f"runs:/{other_runs['training']}/model"):
        path = resolve_model(uri, tmp_path / uri.split(":")[0], tracking_uri=store)
        assert path.name == "checkpoint_final.pt"
        assert path.read_bytes() == (trained / "checkpoint_final.pt").read_bytes()


def test_resolve_model_uses_mlflows_default_store(releases, store, trained, tmp_path,
                                                  monkeypatch):
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(None)  # as in a fresh process (this also unsets the variable)...
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # ...where the environment names the store
    try:
        path = resolve_model(f"models:/{NAME}/2", tmp_path)
    finally:
        mlflow.set_tracking_uri(before)
    assert path == tmp_path / "checkpoint_best.pt"


@pytest.mark.parametrize("reference", ["models:/cesynth-default@champion", "runs:/0123abcd"])
def test_an_mlflow_uri_without_a_tracking_store_is_refused_and_creates_none(reference, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    err = refused(resolve_model, reference, tmp_path / "download")
    assert str(err.who) == reference and "set MLFLOW_TRACKING_URI" in err.problem
    assert list(tmp_path.iterdir()) == []  # no new mlflow.db (or mlruns) in the current folder


def test_predict_with_models_uri_and_no_tracking_store_says_so_in_one_line(tmp_path):
    t1 = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), dtype=np.float32), np.eye(4)), t1)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([CESYNTH, "predict", "--t1", "t1.nii.gz", "--model",
                             "models:/cesynth-default@champion", "--out", "out.nii.gz"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: models:/cesynth-default@champion: no MLflow tracking store set: set "
        "MLFLOW_TRACKING_URI to the store that holds it (sqlite:///<results>/mlflow.db or "
        "http://<server>)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.nii.gz"]


def test_resolve_model_downloads_into_a_new_temporary_folder(releases, store, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = resolve_model(f"models:/{NAME}/1", tracking_uri=store)
    assert path.name == "checkpoint_final.pt" and path.is_file()
    assert path.parent.parent == tmp_path and path.parent.name.startswith("cesynth-")


@pytest.mark.parametrize(("reference", "problem"), [
    ("no-such-checkpoint.pt", "not a checkpoint file or an MLflow runs:/ or models:/ URI"),
    ("models:/cesynth-rel", "expected models:/<name>/<version or alias> or "
                            "models:/<name>@<alias>"),
    ("models:/cesynth-rel/1/extra", "expected models:/<name>/<version or alias>"),
    ("models:/", "expected models:/<name>/<version or alias>"),
    ("runs:/", "no run ID after runs:/"),
    ("runs://", "no run ID after runs:/"),
    ("models:/cesynth-unknown/1", "no such registered model version ("),
    ("models:/cesynth-rel/99", "no such registered model version ("),
    ("models:/cesynth-rel@nobody", "no such registered model version ("),
    ("models:/cesynth-rel/nobody", "no such registered model version ("),
    ("models:/cesynth-unknown/latest", "registered model 'cesynth-unknown' has no versions"),
    ("models:/cesynth-unversioned/latest",
     "registered model 'cesynth-unversioned' has no versions"),
    ("models:/cesynth-runless/1", "model version 1 was not logged by an MLflow run "
                                  "(no checkpoint to fetch)"),
    ("models:/cesynth-empty/1", "cannot fetch checkpoint_final.pt or checkpoint_best.pt of run "
                                "{empty} (not logged)"),
    ("runs:/{empty}/model", "cannot fetch checkpoint_final.pt or checkpoint_best.pt of run "
                            "{empty} (not logged)"),
    ("runs:/0123456789abcdef0123456789abcdef/model",
     "cannot fetch checkpoint_final.pt or checkpoint_best.pt of run "
     "0123456789abcdef0123456789abcdef ("),
])
def test_resolve_model_refuses_what_it_cannot_find(reference, problem, releases, other_runs,
                                                   store, tmp_path):
    reference = reference.format(**other_runs)
    err = refused(resolve_model, reference, tmp_path / "download", tracking_uri=store)
    assert err.who == reference
    assert err.problem.startswith(problem.format(**other_runs))
    assert not list((tmp_path / "download").glob("*.pt"))


def test_resolve_model_refuses_a_folder(trained):
    err = refused(resolve_model, trained)
    assert err.who == str(trained)
    assert err.problem == "not a checkpoint file or an MLflow runs:/ or models:/ URI"


def test_a_failed_download_leaves_no_temporary_folder(store, other_runs, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    refused(resolve_model, f"runs:/{other_runs['empty']}/model", tracking_uri=store)
    assert list(tmp_path.glob("cesynth-*")) == []


# ---------------------------------------------------------------- resolve_cascade


@pytest.mark.parametrize("reference", ["models:/cesynth-rel/1", "models:/cesynth-rel@champion",
                                       "runs:/{first}/model"])
def test_resolve_cascade_downloads_the_releases_cascades(reference, releases, store, cascades,
                                                         tmp_path):
    uri = reference.format(first=releases["first"]["run_id"])
    found = resolve_cascade(uri, tmp_path / "download", tracking_uri=store)
    assert found == {"T2w": tmp_path / "download" / "cascade" / "T2w.pt",
                     "adc": tmp_path / "download" / "cascade" / "adc.pt"}
    for target, path in found.items():
        assert path.read_bytes() == cascades[target].read_bytes()
    assert load_generator(found["adc"]).settings.target == "adc"


def test_resolve_cascade_of_a_release_without_cascades_is_empty(releases, other_runs, store,
                                                                tmp_path):
    assert resolve_cascade(f"models:/{NAME}/2", tmp_path / "a", tracking_uri=store) == {}
    assert resolve_cascade(f"runs:/{other_runs['training']}", tmp_path / "b",
                           tracking_uri=store) == {}
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resolve_cascade_finds_the_workflows_sibling_folders(final, cascades, tmp_path):
    train_dir = tmp_path / "results" / "train"
    model = train_dir / "default" / "checkpoint_final.pt"
    for folder, source in (("default", final), ("cascade-T2w", cascades["T2w"]),
                           ("cascade-adc", cascades["adc"])):
        (train_dir / folder).mkdir(parents=True)
        shutil.copyfile(source, train_dir / folder / "checkpoint_final.pt")
    shutil.copyfile(cascades["T2w"], train_dir / "cascade-T2w" / "checkpoint_best.pt")
    assert resolve_cascade(model) == {"T2w": train_dir / "cascade-T2w" / "checkpoint_final.pt",
                                      "adc": train_dir / "cascade-adc" / "checkpoint_final.pt"}
    # the same file name only: a best checkpoint goes with the best ones
    best_model = train_dir / "default" / "checkpoint_best.pt"
    shutil.copyfile(final, best_model)
    assert resolve_cascade(best_model) == {
        "T2w": train_dir / "cascade-T2w" / "checkpoint_best.pt"}
    # a cascade model is not its own cascade
    assert resolve_cascade(train_dir / "cascade-T2w" / "checkpoint_final.pt") == {
        "adc": train_dir / "cascade-adc" / "checkpoint_final.pt"}
    # nothing beside a lone checkpoint
    assert resolve_cascade(final) == {}


def test_resolve_cascade_refuses_what_it_cannot_find(store, tmp_path):
    missing = tmp_path / "checkpoint_final.pt"
    err = refused(resolve_cascade, missing)
    assert err.who == str(missing)
    assert err.problem == "not a checkpoint file or an MLflow runs:/ or models:/ URI"
    err = refused(resolve_cascade, "models:/cesynth-unknown/3", tmp_path, tracking_uri=store)
    assert err.who == "models:/cesynth-unknown/3"
    assert err.problem.startswith("no such registered model version (")
    run = "0123456789abcdef0123456789abcdef"
    err = refused(resolve_cascade, f"runs:/{run}", tmp_path, tracking_uri=store)
    assert err.who == f"runs:/{run}"
    assert err.problem.startswith(f"cannot fetch the cascade models of run {run} (")


# ---------------------------------------------------------------- check_cascade


@pytest.fixture(scope="module")
def generators(final, cascades) -> dict:
    return {"ce": load_generator(final), **{t: load_generator(p) for t, p in cascades.items()}}


def test_check_cascade_accepts_a_matching_cascade(generators):
    for target in CASCADE_TARGETS:
        assert check_cascade(generators[target], target, "c.pt", model_grid=GRID,
                             normalise="histeq") is None
        assert check_cascade(generators[target], target, "c.pt", model_grid=tuple(GRID),
                             normalise="histeq") is None


@pytest.mark.parametrize(("which", "target", "problem"), [
    ("T2w", "adc", "not a T1 -> adc cascade model (it takes T1w to T2w)"),
    ("adc", "T2w", "not a T1 -> T2w cascade model (it takes T1w to adc)"),
    ("ce", "T2w", "not a T1 -> T2w cascade model (it takes T1w,T2w,adc to ceT1w)"),
])
def test_check_cascade_refuses_another_modality(which, target, problem, generators):
    err = refused(check_cascade, generators[which], target, "cascade.pt", model_grid=GRID,
                  normalise="histeq")
    assert err.who == "cascade.pt" and err.problem == problem


def test_check_cascade_refuses_a_model_that_takes_more_than_the_t1(final, tmp_path):
    two_inputs = load_generator(remake(final, tmp_path / "c.pt", modalities=["T1w", "T2w"],
                                       target="adc"))
    err = refused(check_cascade, two_inputs, "adc", "c.pt", model_grid=GRID, normalise="histeq")
    assert err.who == "c.pt"
    assert err.problem == "not a T1 -> adc cascade model (it takes T1w,T2w to adc)"


@pytest.mark.parametrize("preprocessing", [{}, {"normalise": "histeq"}, {"model_grid": GRID},
                                           {"model_grid": [], "normalise": "histeq"}])
def test_check_cascade_refuses_a_cascade_without_preprocessing_record(preprocessing,
                                                                      generators):
    cascade = dataclasses.replace(generators["T2w"], preprocessing=preprocessing)
    err = refused(check_cascade, cascade, "T2w", "t2.pt", model_grid=GRID, normalise="histeq")
    assert err.who == "t2.pt"
    assert err.problem == ("cascade model for T2w has no model grid or normalisation in its "
                           "preprocessing record; retrain it with the workflow, or use "
                           "--no-cascade")


@pytest.mark.parametrize(("grid", "normalise", "theirs", "ours"), [
    ([48, 48, 32], "histeq", "[32, 40, 32] with histeq", "[48, 48, 32] with histeq"),
    (GRID, "zscore", "[32, 40, 32] with histeq", "[32, 40, 32] with zscore"),
    ([32, 32, 40], "histeq", "[32, 40, 32] with histeq", "[32, 32, 40] with histeq"),
])
def test_check_cascade_refuses_another_grid_or_normalisation(grid, normalise, theirs, ours,
                                                             generators):
    err = refused(check_cascade, generators["adc"], "adc", "adc.pt", model_grid=grid,
                  normalise=normalise)
    assert err.who == "adc.pt"
    assert err.problem == (f"cascade model for adc was trained on model grid {theirs} "
                           f"normalisation, the CE-T1 model on {ours}; use a cascade trained "
                           "like the CE-T1 model, or --no-cascade")



# ---------------------------------------------------------------- the release gate

GATES = ReleaseGates(min_val_brain_psnr=15.0, tolerance_db=0.5)


def champion_with(psnr: float | None, version: int = 3) -> Champion:
    return Champion(version=version, scores={} if psnr is None else {GATE_SCORE: psnr})


def test_gate_passes_the_first_version_above_the_floor():
    decision = gate_decision({GATE_SCORE: 17.25, "setB_brain_psnr_mean": 3.0}, None, GATES)
    assert decision.passed and decision.tag == "passed"
    assert decision.reason == "validation brain PSNR 17.25 dB >= floor 15 dB; no champion yet"
    assert decision.score == 17.25 and decision.champion_version is None
    assert decision.champion_score is None


def test_gate_passes_a_version_not_worse_than_the_champion_beyond_the_tolerance():
    for score in (16.6, 17.0, 18.0):  # 0.4 below, equal, above the champion's 17.0
        decision = gate_decision({GATE_SCORE: score}, champion_with(17.0), GATES)
        assert decision.passed, score
        assert decision.reason.endswith("not worse than champion v3 (17.00 dB) beyond the "
                                        "tolerance 0.5 dB")
        assert decision.champion_version == 3 and decision.champion_score == 17.0


def test_gate_fails_below_the_floor_whatever_the_champion():
    for champion in (None, champion_with(10.0)):
        decision = gate_decision({GATE_SCORE: 14.99}, champion, GATES)
        assert not decision.passed
        assert decision.reason == "validation brain PSNR 14.99 dB is below the floor 15 dB"
        assert decision.tag == f"failed: {decision.reason}"


def test_gate_fails_against_a_better_champion():
    decision = gate_decision({GATE_SCORE: 16.4}, champion_with(17.0), GATES)
    assert not decision.passed
    assert decision.tag == ("failed: validation brain PSNR 16.40 dB is 0.60 dB below champion "
                            "v3 (17.00 dB), more than the tolerance 0.5 dB")
    strict = ReleaseGates(min_val_brain_psnr=15.0, tolerance_db=0.0)
    assert not gate_decision({GATE_SCORE: 16.99}, champion_with(17.0), strict).passed
    assert gate_decision({GATE_SCORE: 17.0}, champion_with(17.0), strict).passed


def test_gate_without_a_validation_score_never_falls_back_on_a_reported_score():
    reported = {"setA_brain_psnr_mean": 30.0, "setB_brain_psnr_mean": 20.0}
    for scores in ({}, reported, {GATE_SCORE: float("nan")}):
        decision = gate_decision(scores, None, GATES)
        assert not decision.passed and decision.score is None
        assert decision.tag == ("failed: no validation brain PSNR (trained without validation "
                                "subjects)")
    waived = ReleaseGates(min_val_brain_psnr=15.0, tolerance_db=0.5, require_score=False)
    decision = gate_decision({}, None, waived)
    assert decision.passed
    assert decision.reason == ("no validation brain PSNR; the floor is waived "
                               "(release.gates.require_score: false); no champion yet")
    assert gate_decision({}, champion_with(None), waived).passed
    decision = gate_decision({}, champion_with(17.0), waived)  # nothing to compare with
    assert decision.tag == "failed: no validation brain PSNR to compare with champion v3 (17.00 dB)"


def test_gate_passes_against_a_champion_without_a_score():
    decision = gate_decision({GATE_SCORE: 15.5}, champion_with(None, version=1), GATES)
    assert decision.passed
    assert decision.reason == ("validation brain PSNR 15.50 dB >= floor 15 dB; champion v1 has "
                               "no validation brain PSNR to compare with")


def test_gate_decision_as_a_mapping():
    decision = gate_decision({GATE_SCORE: 16.0}, champion_with(17.0), GATES)
    assert decision.to_dict() == {
        "passed": False, "reason": decision.reason, "tag": decision.tag, "score": 16.0,
        "champion_version": 3, "champion_score": 17.0, "min_val_brain_psnr": 15.0,
        "tolerance_db": 0.5, "require_score": True}


def test_release_gates_come_from_the_config_and_its_schema():
    from snakemake.utils import validate

    root = Path(__file__).parent.parent / "config"
    config = yaml.safe_load((root / "config.yaml").read_text())
    gates = ReleaseGates.from_config(config["release"]["gates"])
    assert gates == ReleaseGates(min_val_brain_psnr=10.0, tolerance_db=0.5, require_score=True)
    bare = {"bids_dir": "bids", "release": {}}
    validate(bare, str(root / "config.schema.yaml"))  # the schema's defaults are the config's
    assert ReleaseGates.from_config(bare["release"]["gates"]) == gates
    for wrong in ({"min_val_brain_psnr": "high"}, {"tolerance_db": -1}, {"floor": 3}):
        with pytest.raises(Exception, match="(?i)valid"):
            validate({"bids_dir": "bids", "release": {"gates": wrong}},
                     str(root / "config.schema.yaml"))


def test_the_gate_score_is_the_validation_psnr_of_the_checkpoint_weights(tmp_path, final):
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    train_cache = cached_training_subject(tmp_path / "a", rng)
    val_cache = cached_training_subject(tmp_path / "b", rng)
    settings = TrainSettings.from_dict(SETTINGS | {"stages": [[3, 1.0, 1.0, 1.0, 3e-3]]})
    summary = train([train_cache], [val_cache], tmp_path / "run", settings,
                    preprocessing=PREPROCESSING)
    epochs = json.loads(Path(summary["metrics"]).read_text())["history"]["epochs"]
    assert len(epochs) == 3 and all(np.isfinite(e["psnr"]) for e in epochs)
    best = validation_brain_psnr(read_checkpoint(Path(summary["checkpoint_best"])))
    assert best == summary["best_psnr"] == max(e["psnr"] for e in epochs)
    last = validation_brain_psnr(read_checkpoint(Path(summary["checkpoint_final"])))
    assert last == summary["final_psnr"] == epochs[-1]["psnr"]
    assert validation_brain_psnr(read_checkpoint(final)) is None  # trained without validation


def release_with_gate(store: str, name: str, checkpoint: Path, psnr: float,
                      gates: ReleaseGates = GATES) -> tuple[dict, object]:
    """What the release rule does: register, decide against the champion, apply."""
    scores = {GATE_SCORE: psnr, "setB_tumor_psnr_mean": 9.0}
    with tracking.stage_run("release_model", {"experiment": name}, uri=store):
        record = register_release(checkpoint, name, scores=scores)
        decision = gate_decision(scores, read_champion(name, tracking_uri=store), gates)
        apply_gate(name, record["version"], decision, tracking_uri=store)
    return record, decision


def test_a_worse_version_does_not_take_the_champion_and_a_better_one_does(store, final, best,
                                                                          tmp_path):
    name = "cesynth-gated"
    client = client_of(store)
    assert read_champion(name, tracking_uri=store) is None  # not registered yet

    first, decision = release_with_gate(store, name, final, 16.0)
    assert decision.passed and decision.champion_version is None
    assert client.get_registered_model(name).aliases == {CHAMPION_ALIAS: 1}
    assert read_champion(name, tracking_uri=store) == Champion(
        version=1, scores={GATE_SCORE: 16.0, "setB_tumor_psnr_mean": 9.0})

    second, decision = release_with_gate(store, name, best, 15.2)  # above the floor, 0.8 worse
    assert second["version"] == 2 and not decision.passed
    assert decision.champion_version == 1 and decision.champion_score == 16.0
    tags = client.get_model_version(name, "2").tags
    assert tags[GATE_TAG] == ("failed: validation brain PSNR 15.20 dB is 0.80 dB below "
                              "champion v1 (16.00 dB), more than the tolerance 0.5 dB")
    assert tags[GATE_REASON_TAG] == decision.reason
    assert client.get_registered_model(name).aliases == {CHAMPION_ALIAS: 1}  # unchanged
    assert client.get_model_version(name, "1").tags[GATE_TAG] == "passed"
    path = resolve_model(f"models:/{name}@{CHAMPION_ALIAS}", tmp_path / "v1", tracking_uri=store)
    assert path.name == "checkpoint_final.pt" and path.read_bytes() == final.read_bytes()

    third, decision = release_with_gate(store, name, best, 16.3)
    assert third["version"] == 3 and decision.passed and decision.champion_version == 1
    assert client.get_model_version(name, "3").tags[GATE_TAG] == "passed"
    assert client.get_registered_model(name).aliases == {CHAMPION_ALIAS: 3}
    path = resolve_model(f"models:/{name}@{CHAMPION_ALIAS}", tmp_path / "v3", tracking_uri=store)
    assert path.name == "checkpoint_best.pt" and path.read_bytes() == best.read_bytes()

    # a version below the floor fails even with no score to beat
    _, decision = release_with_gate(store, "cesynth-floor", final, 9.0)
    assert not decision.passed
    assert client.get_registered_model("cesynth-floor").aliases == {}
    assert read_champion("cesynth-floor", tracking_uri=store) is None


def test_read_champion_takes_the_full_precision_score_of_the_run(releases, store):
    # NAME's champion (v1) was registered with validation_brain_psnr 28.123456789: the version
    # tag holds 6 digits, the run's metric all of them
    champion = read_champion(NAME, tracking_uri=store)
    assert champion.version == 1
    assert champion.scores == {GATE_SCORE: 28.123456789, "setA_brain_psnr_mean": 17.5,
                               "setB_brain_ssim_mean": 0.5}


# ---------------------------------------------------------------- the model card


@pytest.fixture(scope="module")
def card_inputs(tmp_path_factory) -> dict[str, Path]:
    """A sets table written by the ingest's own code and an evaluation summary by evaluate's."""
    root = tmp_path_factory.mktemp("card")
    reports = []
    # by the ID hash at these shares: 01, 02 train, 03 validation, 04, 09 test; 07 is Set B
    layout = [("01", "A"), ("02", "A"), ("03", "A"), ("04", "A"), ("09", "A"), ("07", "B")]
    for scan, set_name in layout:
        modalities = ["T1w", "ceT1w", "T2w", "dwi"] if scan != "02" else ["T1w", "ceT1w", "dwi"]
        files = {"tumor_mask": "m.nii.gz"} if set_name == "B" else {}
        reports.append(write_json({"status": "included", "scan_id": scan, "participant": scan,
                                   "session": None, "set": set_name, "modalities": modalities,
                                   "files": files}, root / f"sub-{scan}_report.json"))
    table = write_sets_table(reports, root / "sets.tsv",
                             SplitFractions(validation=0.2, test=0.35))
    splits = dict(zip(table["scan_id"], table["split"], strict=True))
    assert splits == {"01": "train", "02": "train", "03": "validation", "04": "test",
                      "07": "test", "09": "test"}
    rng = np.random.default_rng(3)
    rows = []
    for model in ("default", "floor-t1"):
        for scan, set_name in layout:
            if splits[scan] != "test":
                continue
            row = {"subject": scan, "set": set_name, "model": model,
                   "brain_mae": rng.uniform(0.05, 0.1), "brain_psnr": rng.uniform(15, 19),
                   "brain_ssim": rng.uniform(0.8, 0.9)}
            if set_name == "B":
                row |= {"tumor_mae": 0.3, "tumor_psnr": 9.5, "tumor_ssim": 0.4}
            rows.append(row)
    per_subject = pd.DataFrame(rows)
    write_tsv(summarise(per_subject, by=("set", "model")), root / "summary.tsv")
    return {"sets": root / "sets.tsv", "summary": root / "summary.tsv", "splits": splits,
            "per_subject": per_subject}


RECORD = {"name": "cesynth-default", "version": 4, "model_uri": "models:/cesynth-default/4",
          "run_id": "abc123", "checkpoint_sha256": "f" * 64, "cascade": {"T2w": "e" * 64}}


def test_model_card_holds_every_section(card_inputs, final, tmp_path):
    decision = gate_decision({GATE_SCORE: 16.0}, champion_with(17.0), GATES)
    out = write_model_card(tmp_path / "release" / "default_model_card.md", release=RECORD,
                           experiment="default", checkpoint=final, sets=card_inputs["sets"],
                           summary=card_inputs["summary"], gate=decision.to_dict(),
                           evaluated_checkpoint="final", date=datetime.date(2026, 1, 2))
    assert out == tmp_path / "release" / "default_model_card.md"
    text = out.read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["# Model card: cesynth-default, version 4", "## Release",
                        "## Intended use", "## Synthetic images, not for diagnosis",
                        "## Training data", "## Preprocessing", "## Evaluation",
                        "## Release gate", "## Known limitations"]
    assert "| model URI | `models:/cesynth-default/4` |" in text
    assert "| champion | no (the champion is unchanged) |" in text
    assert "| released on | 2026-01-02 |" in text
    assert f"| checkpoint | final (SHA-256 `{'f' * 64}`) |" in text
    assert "| inputs | T1w, T2w, adc |" in text and "| cascade models | T2w |" in text
    assert "**synthetic**" in text and "**not for diagnosis**" in text
    # training data: subjects and scans per set and split, from the sets table
    splits = pd.Series(card_inputs["splits"])
    sets = read_tsv(card_inputs["sets"])
    for (set_name, split), group in sets.groupby(["set", "split"]):
        n = len(group)
        assert re.search(rf"^\| {set_name} \| {split} \| {n} \| {n} \| ", text, re.M), split
    assert "| B | test | 1 | 1 | reported (Set B, expert tumor masks) |" in text
    assert "1 without T2w" in text and "Scanners: not recorded in the sets table." in text
    # the preprocessing record, every key as stored
    for key, value in PREPROCESSING.items():
        shown = json.dumps(value) if isinstance(value, list) else value
        assert f"| `{key}` | {shown} |" in text
    # the evaluation: this model's rows only, mean ± sd and n
    summary = pd.read_csv(card_inputs["summary"], sep="\t", na_values=["n/a"])
    a = summary[(summary["set"] == "A") & (summary["model"] == "default")].iloc[0]
    n_a = int((splits[sets.set_index("scan_id")["set"] == "A"] == "test").sum())
    assert int(a["n"]) == n_a
    expected = format_mean_sd(a["brain_psnr_mean"], a["brain_psnr_sd"], 2)
    assert n_a >= 2  # the 95% interval of the mean, by hand: mean ± t(0.975, n-1) sd / sqrt(n)
    half = stats.t.ppf(0.975, n_a - 1) * a["brain_psnr_sd"] / np.sqrt(n_a)
    expected += f" [{a['brain_psnr_mean'] - half:.2f}, {a['brain_psnr_mean'] + half:.2f}]"
    assert re.search(rf"^\| A \(test\) \| brain \| {n_a} \| [^|]+ \| {re.escape(expected)} \|",
                     text, re.M)
    assert "| B | tumor | 1 | 0.300 | 9.50 | 0.400 |" in text  # n = 1: no sd
    assert "| A (test) | tumor |" not in text  # no tumor masks in Set A
    assert text.count("| brain |") == 2  # floor-t1's rows are not this model's
    # the gate, intended use, limitations
    assert "| outcome | **failed** |" in text and decision.reason in text
    assert "| champion before this release | version 3 |" in text
    assert "the gate reads the validation split only" in text
    assert "| validation brain PSNR of the released weights | 16.00 dB |" in text
    assert "| champion's validation brain PSNR | 17.00 dB |" in text
    assert "Small lesions" in text and "Trained on the given cohort only (" in text
    assert "(32 x 40 x 32 voxels)" in text


def test_model_card_of_an_unevaluated_passed_release(card_inputs, final, tmp_path):
    decision = gate_decision({}, None, ReleaseGates(10.0, 0.5, require_score=False))
    text = write_model_card(tmp_path / "card.md", release=RECORD, experiment="default",
                            checkpoint=final, sets=card_inputs["sets"], summary=None,
                            gate=decision.to_dict()).read_text()
    assert "Not evaluated: the run had no reported subjects" in text
    assert "| champion | yes (alias `champion`) |" in text
    assert "| champion before this release | none |" in text


def test_model_card_prints_any_preprocessing_record(final, card_inputs, tmp_path):
    record = {**PREPROCESSING, "brainmask": {"method": "deepbet", "reference": "T1w"},
              "adc": {"b_values": [0, 500, 1000], "clip": [0.0, 0.004]}, "note": "a|b"}
    checkpoint = remake(final, tmp_path / "checkpoint_final.pt", preprocessing=record)
    gate = gate_decision({GATE_SCORE: 20.0}, None, GATES).to_dict()
    text = write_model_card(tmp_path / "card.md", release=RECORD, experiment="default",
                            checkpoint=checkpoint, sets=card_inputs["sets"],
                            summary=card_inputs["summary"], gate=gate).read_text()
    assert "| `brainmask.method` | deepbet |" in text
    assert "| `brainmask.reference` | T1w |" in text
    assert "| `adc.b_values` | [0, 500, 1000] |" in text
    assert "| `note` | a\\|b |" in text


def test_model_card_refuses_a_missing_sets_table(final, tmp_path):
    gate = gate_decision({GATE_SCORE: 20.0}, None, GATES).to_dict()
    err = refused(write_model_card, tmp_path / "card.md", release=RECORD, experiment="default",
                  checkpoint=final, sets=tmp_path / "sets.tsv", summary=None, gate=gate)
    assert err.who == str(tmp_path / "sets.tsv") and err.problem == "file not found"
    assert not (tmp_path / "card.md").exists()


def test_the_model_card_is_logged_to_the_release_run(store, final, card_inputs, tmp_path):
    gate = gate_decision({GATE_SCORE: 20.0}, None, GATES).to_dict()
    card = write_model_card(tmp_path / "card.md", release=RECORD, experiment="default",
                            checkpoint=final, sets=card_inputs["sets"],
                            summary=card_inputs["summary"], gate=gate)
    with tracking.stage_run("release_model", {"experiment": "card"}, uri=store) as run:
        log_model_card(card)
    logged = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=MODEL_CARD_ARTIFACT, dst_path=str(tmp_path / "d"),
        tracking_uri=store)
    assert Path(logged).read_text() == card.read_text()
