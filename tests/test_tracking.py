"""The MLflow backbone: a real SQLite store, real runs, concurrent first use."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from cesynth import tracking
from cesynth.jobs import Job, JobOutcome, run_job


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_default_uri_is_sqlite_under_results(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.default_tracking_uri(tmp_path / "results")
    assert uri == f"sqlite:///{(tmp_path / 'results').resolve()}/mlflow.db"
    assert tracking.sqlite_path(uri) == (tmp_path / "results" / "mlflow.db").resolve()


def test_environment_and_config_override_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.default_tracking_uri(tmp_path, "http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")
    assert tracking.default_tracking_uri(tmp_path, "http://mlflow:5000") == "sqlite:////elsewhere.db"


def test_stage_run_records_tags_params_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENV_INVOCATION_ID, "inv123")
    monkeypatch.setenv(tracking.ENV_CONFIG_HASH, "cfg456")
    monkeypatch.setenv(tracking.ENV_GIT_COMMIT, "abc789")
    uri = _uri(tmp_path)
    with tracking.stage_run("fit_adc", {"subject": "01"}, uri=uri,
                            params={"adc": {"b_values": [0, 500, 1000]}}):
        mlflow.log_metric("median_adc", 0.8e-3)
    runs = mlflow.search_runs(experiment_names=["cesynth"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "fit_adc[subject=01]"
    assert run.data.tags["cesynth.rule"] == "fit_adc"
    assert run.data.tags["cesynth.wildcard.subject"] == "01"
    assert run.data.tags["cesynth.invocation_id"] == "inv123"
    assert run.data.tags["cesynth.config_hash"] == "cfg456"
    assert run.data.tags["cesynth.git_commit"] == "abc789"
    assert run.data.params["adc.b_values"] == "[0, 500, 1000]"
    assert run.data.metrics["median_adc"] == pytest.approx(0.8e-3)


def test_failed_block_marks_the_run_failed(tmp_path):
    uri = _uri(tmp_path)
    with pytest.raises(RuntimeError):
        with tracking.stage_run("register", {"subject": "02"}, uri=uri):
            raise RuntimeError("boom")
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["cesynth"], output_format="list")
    assert run.info.status == "FAILED"


def test_config_hash_ignores_key_order_and_sees_values():
    reordered = tracking.config_hash({"b": {"c": 2}, "a": 1})
    assert tracking.config_hash({"a": 1, "b": {"c": 2}}) == reordered
    assert tracking.config_hash({"a": 1}) != tracking.config_hash({"a": 2})


def _first_run_in_new_store(uri: str, index: int) -> None:
    with tracking.stage_run("concurrent", {"job": str(index)}, uri=uri):
        mlflow.log_metric("index", index)


def test_concurrent_first_runs_do_not_race_on_a_fresh_store(tmp_path):
    # Without the lock, processes starting their first run on a new SQLite store at once
    # fail in MLflow's schema migration (FIELD-NOTES).
    uri = _uri(tmp_path)
    context = mp.get_context("spawn")
    jobs = [context.Process(target=_first_run_in_new_store, args=(uri, i)) for i in range(6)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
    assert [job.exitcode for job in jobs] == [0] * 6
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cesynth"], output_format="list")
    assert sorted(int(run.data.metrics["index"]) for run in runs) == list(range(6))


def _validate_job(log_path: Path) -> Job:
    return Job("validate_subject", {"subject": "07"}, str(log_path), threads=2)


@pytest.mark.parametrize("live", [False, True], ids=["spooled", "live"])
def test_run_job_logs_outcome_and_reports_input_errors_in_one_line(tmp_path, monkeypatch, capfd,
                                                                   live):
    from cesynth import run_spool
    from cesynth.io import InputError
    from cesynth.jobs import ENV_RESULTS_DIR, ENV_TRACKING_URI

    uri = _uri(tmp_path)
    monkeypatch.setenv(ENV_TRACKING_URI, uri)
    monkeypatch.setenv(ENV_RESULTS_DIR, str(tmp_path / "results"))
    artifact = tmp_path / "qc.txt"
    artifact.write_text("qc")
    monkeypatch.setattr("sys.stderr", os.sys.stderr)
    run_job(_validate_job(tmp_path / "ok.log"),
            lambda: JobOutcome(metrics={"volume_ml": 1234.5, "flag": True}, artifacts=[artifact]),
            live=live)

    def bad_input():
        raise InputError("sub-07", "sub-07_dwi.bval: 6 b-values for 7 volumes")

    with pytest.raises(SystemExit) as exit_info:
        run_job(_validate_job(tmp_path / "bad.log"), bad_input, live=live)
    assert exit_info.value.code == 1
    line = "error: sub-07: sub-07_dwi.bval: 6 b-values for 7 volumes"
    assert line in capfd.readouterr().err
    assert line in (tmp_path / "bad.log").read_text()
    assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "2"
    spool = run_spool.spool_dir(tmp_path / "results")
    assert run_spool.spooled_count(spool) == (0 if live else 2)
    assert run_spool.send_spool(spool, end_running="none") == (0 if live else 2)

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cesynth"], output_format="list",
                              order_by=["attributes.start_time ASC"])
    assert [run.info.status for run in runs] == ["FINISHED", "FAILED"]
    assert runs[0].data.metrics == {"volume_ml": 1234.5, "flag": 1.0}
    artifacts = mlflow.MlflowClient(uri).list_artifacts(runs[0].info.run_id)
    assert [a.path for a in artifacts] == ["qc.txt"]


# A job as a workflow script runs it: the job's log, how it ends (argv[2]), the file it touches
# once its run is open (argv[3]), and whether it logs live or through the spool (argv[4]).
_JOB = """
import sys, time
from pathlib import Path
from cesynth.jobs import Job, run_job

def work():
    Path(sys.argv[3]).touch()  # the run is open
    if sys.argv[2] == "raise":
        raise RuntimeError("boom")
    time.sleep(600)

run_job(Job("train_model", {"experiment": "default"}, sys.argv[1]), work,
        live=sys.argv[4] == "live")
"""


def _start_job(tmp_path: Path, ending: str, uri: str, invocation: str,
               mode: str = "live") -> subprocess.Popen:
    """A job process with its MLflow run open once it returns (or the job has already ended);
    its results folder (the spool's) is ``tmp_path / "results"``."""
    from cesynth.jobs import ENV_RESULTS_DIR, ENV_TRACKING_URI

    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, ENV_TRACKING_URI: uri, tracking.ENV_INVOCATION_ID: invocation,
           ENV_RESULTS_DIR: str(tmp_path / "results")}
    job = subprocess.Popen([sys.executable, "-c", _JOB, str(tmp_path / "job.log"), ending,
                            str(ready), mode], env=env)
    while not ready.exists() and job.poll() is None:
        time.sleep(0.2)
    return job


def _only_run(uri: str) -> mlflow.entities.Run:
    (run,) = mlflow.MlflowClient(uri).search_runs(
        [tracking.init_store(uri)], "tags.`cesynth.rule` = 'train_model'")
    return run


@pytest.mark.parametrize("mode", ["live", "spooled"])
@pytest.mark.parametrize(("ending", "exit_code", "status"), [
    ("SIGTERM", 128 + signal.SIGTERM, "KILLED"),  # SLURM's timeout or scancel
    ("raise", 1, "FAILED"),
])
def test_a_job_that_fails_or_gets_sigterm_never_leaves_its_run_running(tmp_path, ending,
                                                                        exit_code, status, mode):
    from cesynth import run_spool

    uri = _uri(tmp_path)
    tracking.init_store(uri)
    job = _start_job(tmp_path, ending, uri, "inv-term", mode)
    if ending == "SIGTERM":
        job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=300) == exit_code
    # the job's invocation goes on: only ended runs are sent
    run_spool.send_spool(run_spool.spool_dir(tmp_path / "results"), end_running="none")
    assert _only_run(uri).info.status == status


def test_runs_of_jobs_killed_outright_end_killed_when_the_workflow_ends(tmp_path, monkeypatch):
    uri = _uri(tmp_path)
    experiment_id = tracking.init_store(uri)
    job = _start_job(tmp_path, "SIGKILL", uri, "inv-kill")
    job.kill()  # SIGKILL: the job cannot end its run
    job.wait(timeout=60)
    assert _only_run(uri).info.status == "RUNNING"
    other = mlflow.MlflowClient(uri).create_run(  # a job of another invocation, still running
        experiment_id, tags={"cesynth.rule": "fit_adc", "cesynth.invocation_id": "inv-other"})

    monkeypatch.setenv(tracking.ENV_INVOCATION_ID, "inv-kill")
    assert tracking.end_stale_runs(uri) == [_only_run(uri).info.run_id]
    assert _only_run(uri).info.status == "KILLED"
    assert mlflow.MlflowClient(uri).get_run(other.info.run_id).info.status == "RUNNING"


def test_ctrl_c_ends_the_run_killed(tmp_path):
    uri = _uri(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run("train_model", uri=uri):
            raise KeyboardInterrupt
    assert _only_run(uri).info.status == "KILLED"
