"""A real `mlflow server` on 127.0.0.1: many jobs logging at once, and the demo's jobs against it.

SQLite on a shared filesystem is not safe across nodes, so a cluster points every job at one
tracking server (README, "A shared tracking server"). The server here keeps its store in SQLite
and its artifacts in the test's folder, is started on a free loopback port and stopped by its
process group (its PID) at the end. Sixteen processes log through :func:`cesynth.jobs.run_job`
at once, against the server and against the SQLite default; none of their runs or metrics may go
missing. Then the two-subject demo runs to the release with ``MLFLOW_TRACKING_URI`` naming the
server, and its released model is found again through the server.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from helpers.workflow import REPO, dry_run_jobs, snakemake

from cesynth import tracking
from cesynth.jobs import ENV_TRACKING_URI, Job, JobOutcome, run_job
from cesynth.release import resolve_model

JOBS = 16
METRICS = 20  # final metrics per job
STEPS = 10  # per-step training metrics per job
MLFLOW = str(Path(sys.executable).parent / "mlflow")
DEMO = {
    "demo": {"subjects": 2, "set_b_subjects": 1},
    # the training subject is the only Set A subject: no validation score for the gate's floor
    "release": {"gates": {"require_score": False}},
}
DEMO_TARGET = "results-small/release/default.json"


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, log: Path) -> None:
    """Return once ``url/health`` answers; fail if the server exits or stays silent for 10
    minutes (its workers import MLflow: minutes on a busy machine)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server never answered /health:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """Stop the server and its workers: its process group, which it leads (its PID)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """The URL of a real tracking server: SQLite store, artifacts served from a local folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    log = folder / "server.log"
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
               "--workers", "2",  # several writers to the store, as in use; fewer to start
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        wait_for_health(url, process, log)
        yield url
    finally:
        stop(process)


def expected_metrics(index: int) -> dict[str, float]:
    return {f"m{k}": float(index * 100 + k) for k in range(METRICS)}


def _log_one_job(uri: str, index: int, log_dir: Path, start: mp.synchronize.Barrier) -> None:
    """One job: step metrics through the trainer's tracker, then the job's final metrics."""
    os.environ[ENV_TRACKING_URI] = uri
    start.wait(timeout=300)  # every job starts logging at the same moment

    def work() -> JobOutcome:
        tracker = tracking.MlflowTracker()
        for step in range(STEPS):
            tracker.log_step(step, {"loss": index + step / STEPS})
        return JobOutcome(metrics=expected_metrics(index), params={"index": index})

    run_job(Job("concurrent_job", {"job": str(index)}, str(log_dir / f"job-{index}.log")), work,
            live=True)  # in the store while it works, as training


def log_at_once(uri: str, log_dir: Path) -> list[int | None]:
    """Run :data:`JOBS` jobs in separate processes at once; their exit codes."""
    context = mp.get_context("spawn")
    start = context.Barrier(JOBS)
    jobs = [context.Process(target=_log_one_job, args=(uri, i, log_dir, start))
            for i in range(JOBS)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=600)
    return [job.exitcode for job in jobs]


def assert_every_run_and_metric(uri: str) -> None:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_job = {int(run.data.tags["cesynth.wildcard.job"]): run for run in runs}
    assert len(runs) == JOBS and sorted(by_job) == list(range(JOBS))
    for index, run in by_job.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["index"] == str(index)
        assert {k: v for k, v in run.data.metrics.items() if k != "train_loss"} == \
            expected_metrics(index)
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(STEPS))


@pytest.mark.parametrize("store", ["server", "sqlite"])
def test_sixteen_jobs_logging_at_once_lose_no_run_and_no_metric(store, request, tmp_path,
                                                                 monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if store == "server":
        uri = request.getfixturevalue("server")
    else:  # the default, created once before the jobs start, as the workflow's onstart does
        uri = tracking.default_tracking_uri(tmp_path / "results")
        tracking.init_store(uri)
    assert log_at_once(uri, tmp_path / "logs") == [0] * JOBS
    assert_every_run_and_metric(uri)


@pytest.mark.slow
def test_the_demo_runs_to_the_release_against_the_server(server, tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(DEMO))
    args = ("--configfile", str(REPO / "config/profiles/demo-small.yaml"), str(config))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # for resolve_model below
    # the variable wins over the config and the default store
    planned = dry_run_jobs(tmp_path, *args, "--", DEMO_TARGET, tracking_uri=server)
    snakemake(tmp_path, "--cores", "2", *args, "--", DEMO_TARGET, tracking_uri=server)

    assert not (tmp_path / "results-small" / "mlflow.db").exists()
    client = mlflow.MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    invocation = _invocation_of_release(client, experiment.experiment_id)
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`cesynth.invocation_id` = '{invocation}'", max_results=1000)
    per_rule: dict[str, int] = {}
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        per_rule[run.data.tags["cesynth.rule"]] = per_rule.get(run.data.tags["cesynth.rule"], 0) + 1
    assert per_rule == planned  # one run per job, every one on the server
    checkpoint = resolve_model("models:/cesynth-default@champion", tmp_path / "download")
    assert checkpoint.is_file()


def _invocation_of_release(client: mlflow.MlflowClient, experiment_id: str) -> str:
    (release,) = client.search_runs([experiment_id], "tags.`cesynth.rule` = 'release_model'")
    return release.data.tags["cesynth.invocation_id"]
