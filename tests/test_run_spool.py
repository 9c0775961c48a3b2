"""Short jobs' MLflow runs through the spool: written without MLflow, sent once, never lost."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from helpers.workflow import CESYNTH

from cesynth import run_spool, tracking
from cesynth.jobs import ENV_RESULTS_DIR, ENV_TRACKING_URI, Job, JobOutcome, run_job


@pytest.fixture
def store(tmp_path, monkeypatch) -> dict:
    """A SQLite store and a results folder, exported as the workflow exports them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "results"
    monkeypatch.setenv(ENV_TRACKING_URI, uri)
    monkeypatch.setenv(ENV_RESULTS_DIR, str(results))
    monkeypatch.setenv(tracking.ENV_INVOCATION_ID, "inv-now")
    return {"uri": uri, "spool": run_spool.spool_dir(results), "results": results}


def _runs(uri: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000,
                              order_by=["attributes.start_time ASC"])


def _short_job(subject: str, **outcome) -> None:
    run_job(Job("fit_adc", {"subject": subject}, None), lambda: JobOutcome(**outcome))


def test_a_spooled_run_reaches_the_store_with_its_times_tags_and_artifact(store, tmp_path):
    qc = tmp_path / "qc.png"
    qc.write_bytes(b"png")
    started = int(time.time() * 1000)
    _short_job("01", metrics={"median_adc": 0.8e-3}, params={"b": [0, 500, 1000]},
               artifacts=[qc])
    assert _runs_or_none(store["uri"]) == []  # nothing in the store until sent
    assert run_spool.send_spool(store["spool"]) == 1
    (run,) = _runs(store["uri"])
    assert run.info.run_name == "fit_adc[subject=01]" and run.info.status == "FINISHED"
    assert started <= run.info.start_time <= run.info.end_time
    assert run.data.tags["cesynth.invocation_id"] == "inv-now"
    assert run.data.metrics == {"median_adc": 0.8e-3}
    assert run.data.params == {"b": "[0, 500, 1000]"}
    artifacts = mlflow.MlflowClient(store["uri"]).list_artifacts(run.info.run_id)
    assert [a.path for a in artifacts] == ["qc.png"]
    assert run_spool.spooled_count(store["spool"]) == 0
    assert run_spool.send_spool(store["spool"]) == 0  # sent once


def _runs_or_none(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_more_params_and_metrics_than_one_mlflow_batch_takes(store):
    params = {f"p{i}": i for i in range(250)}
    metrics = {f"m{i}": float(i) for i in range(1200)}
    _short_job("01", params=params, metrics=metrics)
    run_spool.send_spool(store["spool"])
    (run,) = _runs(store["uri"])
    assert len(run.data.params) == 250 and len(run.data.metrics) == 1200


def _spooled_running_record(spool: Path, invocation: str) -> Path:
    """The record a job killed outright (SIGKILL) leaves: RUNNING, never ended."""
    record = run_spool.RunRecord(rule="register_anat_to_cet1w", wildcards={"subject": "02"},
                                 uri=os.environ[ENV_TRACKING_URI], experiment="cesynth",
                                 tags={"cesynth.invocation_id": invocation})
    path = spool / f"{invocation}{run_spool.RECORD_SUFFIX}"
    run_spool._write_record(record, path)
    return path


def test_a_record_left_running_is_sent_killed_only_once_its_invocation_is_over(store):
    _spooled_running_record(store["spool"], "inv-now")
    _spooled_running_record(store["spool"], "inv-before")
    assert run_spool.send_spool(store["spool"], end_running="none") == 0
    # a workflow starting: every other invocation is over, this one's jobs may still run
    assert run_spool.send_spool(store["spool"], end_running="others") == 1
    assert [r.data.tags["cesynth.invocation_id"] for r in _runs(store["uri"])] == ["inv-before"]
    assert run_spool.send_spool(store["spool"], end_running="all") == 1  # the workflow ended
    assert {r.info.status for r in _runs(store["uri"])} == {"KILLED"}
    with pytest.raises(ValueError, match="end_running"):
        run_spool.send_spool(store["spool"], end_running="some")


def test_a_job_killed_outright_leaves_a_running_record(store, tmp_path):
    script = ("import time; from cesynth.jobs import Job, run_job; "
              "run_job(Job('fit_adc', {'subject': '03'}), lambda: time.sleep(600))")
    job = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while run_spool.spooled_count(store["spool"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    job.kill()
    job.wait(timeout=60)
    (path,) = store["spool"].glob(f"*{run_spool.RECORD_SUFFIX}")
    assert json.loads(path.read_text())["status"] == "RUNNING"
    assert run_spool.send_spool(store["spool"], end_running="all") == 1
    assert [r.info.status for r in _runs(store["uri"])] == ["KILLED"]


def test_a_sender_that_fails_half_way_is_completed_by_the_next_without_a_second_run(
        store, tmp_path, monkeypatch):
    qc = tmp_path / "qc.txt"
    qc.write_text("qc")
    _short_job("04", metrics={"dice": 0.97}, artifacts=[qc])

    def unreachable(*_args, **_kwargs):
        raise ConnectionError("artifact store unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(mlflow.MlflowClient, "log_artifact", unreachable)
        with pytest.raises(ConnectionError):
            run_spool.send_spool(store["spool"])
    (half,) = _runs(store["uri"])
    assert half.info.status == "RUNNING"
    assert run_spool.send_spool(store["spool"]) == 1
    (run,) = _runs(store["uri"])
    assert run.info.run_id == half.info.run_id and run.info.status == "FINISHED"
    assert [a.path for a in mlflow.MlflowClient(store["uri"]).list_artifacts(run.info.run_id)] \
        == ["qc.txt"]


def test_a_sweep_point_goes_under_its_sweeps_parent_run(store):
    run_job(Job("score_evaluation_subject", {"experiment": "delta-0p3", "subject": "05"}),
            lambda: {"psnr": 21.0}, sweeps=["delta"])
    run_spool.send_spool(store["spool"])
    parents = tracking.sweep_parent_runs(store["uri"], "cesynth", ["delta"])
    (point,) = [r for r in _runs(store["uri"]) if r.info.run_id != parents["delta"]]
    assert point.data.tags[tracking.PARENT_RUN_TAG] == parents["delta"]
    assert point.data.tags["cesynth.sweeps"] == "delta"


def test_a_live_job_sends_what_the_spool_holds_before_it_starts(store):
    _short_job("06", metrics={"voxels": 5.0})
    run_job(Job("train_model", {"experiment": "default"}), lambda: {"loss": 0.1}, live=True)
    assert sorted(r.data.tags["cesynth.rule"] for r in _runs(store["uri"])) == \
        ["fit_adc", "train_model"]
    assert run_spool.spooled_count(store["spool"]) == 0


def _send(spool: str) -> None:
    run_spool.send_spool(spool)


def test_two_senders_at_once_send_every_run_once(store):
    for subject in range(12):
        _short_job(f"{subject:02d}", metrics={"n": float(subject)})
    context = mp.get_context("spawn")
    senders = [context.Process(target=_send, args=(str(store["spool"]),)) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=300)
    assert [sender.exitcode for sender in senders] == [0, 0]
    runs = _runs(store["uri"])
    assert sorted(r.data.metrics["n"] for r in runs) == [float(n) for n in range(12)]


def test_cesynth_send_runs_sends_the_finished_runs(store):
    _short_job("07")
    _spooled_running_record(store["spool"], "inv-now")
    result = subprocess.run([CESYNTH, "send-runs", "--results", str(store["results"])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"sent": 1, "left": 1}  # the running job's stays
    ended = subprocess.run([CESYNTH, "send-runs", "--results", str(store["results"]),
                            "--end-running"], capture_output=True, text=True, timeout=300)
    assert json.loads(ended.stdout) == {"sent": 1, "left": 0}
    missing = subprocess.run([CESYNTH, "send-runs", "--results", str(store["results"] / "no")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: {store['results'] / 'no'}: no such results folder"


def test_a_file_in_the_spool_that_is_not_a_record_is_left_and_the_others_sent(store, capfd):
    _short_job("08")  # its job routes log records to stderr
    stray = store["spool"] / f"stray{run_spool.RECORD_SUFFIX}"
    stray.write_text("{not json")
    assert run_spool.send_spool(store["spool"]) == 1
    assert stray.exists() and "not a spooled MLflow run" in capfd.readouterr().err


def test_a_sender_that_dies_before_noting_its_run_leaves_no_second_run(store, monkeypatch):
    """Between creating the run and noting its ID in the record, a sender (or a create request
    retried after a lost answer) leaves a run the record does not know: the next send's run
    replaces it, and it is deleted."""
    _short_job("09", metrics={"dice": 0.9})
    write_record = run_spool._write_record

    def dies_after_creating(record, path):
        if record.run_id is not None:
            raise ConnectionError("sender killed before it noted the run")
        write_record(record, path)

    with monkeypatch.context() as patch:
        patch.setattr(run_spool, "_write_record", dies_after_creating)
        with pytest.raises(ConnectionError):
            run_spool.send_spool(store["spool"])
    assert len(_runs(store["uri"])) == 1  # the orphan, RUNNING and empty
    assert run_spool.send_spool(store["spool"]) == 1
    (run,) = _runs(store["uri"])
    assert run.info.status == "FINISHED" and run.data.metrics == {"dice": 0.9}
