"""A real `mlflow server` on 127.0.0.1: many jobs logging at once, and the demo's jobs against it.

SQLite on a shared filesystem is not safe across nodes, so a cluster points every job at one
tracking server (README, "A shared tracking server"). The server here keeps its store in SQLite
and its artifacts in the test's folder, is started on a free loopback port and stopped by its
process group (its PID) at the end. Sixteen processes log through :func:`cesynth.jobs.run_job`
at once, against the server and against the SQLite default; none of their runs or metrics may go
missing. Then the two-subject demo runs to the release with ``MLFLOW_TRACKING_URI`` naming the
server, and its released model is found again through the server.

The server is also run on PostgreSQL (Debian's postgresql: a cluster initdb'd, started and stopped
by tests/helpers/postgres.py; skipped where it is not installed), and killed mid-run: SIGKILL to
its process group while training-like jobs log, short jobs run while it is down, then a restart
on the same port and store. Every run, step metric and the model must arrive, none twice.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import pytest
import yaml
from helpers.postgres import PostgresUnavailable, temporary_cluster
from helpers.workflow import REPO, dry_run_jobs, snakemake

from cesynth import run_spool, tracking
from cesynth.jobs import ENV_RESULTS_DIR, ENV_TRACKING_URI, Job, JobOutcome, run_job
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


def start_server(folder: Path, backend_uri: str, port: int) -> subprocess.Popen:
    """A real tracking server on ``port``: ``backend_uri`` for runs, artifacts in ``folder``; it
    leads its own process group (its workers), which :func:`stop` or a kill ends."""
    url = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "2",  # several writers to the store, as in use; fewer to start
               "--backend-store-uri", backend_uri,
               "--artifacts-destination", str(folder / "artifacts")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "a") as out:
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        wait_for_health(url, process, log)
    except BaseException:
        stop(process)
        raise
    return process


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """The URL of a real tracking server: SQLite store, artifacts served from a local folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = start_server(folder, f"sqlite:///{folder / 'mlflow.db'}", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture
def postgres() -> Iterator[str]:
    """The URI of an empty database in a fresh PostgreSQL cluster, stopped at the end."""
    try:
        with temporary_cluster() as uri:
            yield uri
    except PostgresUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture
def postgres_server(postgres, tmp_path) -> Iterator[str]:
    """The URL of a real tracking server whose store is the PostgreSQL database."""
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    port = free_port()
    process = start_server(folder, postgres, port)
    try:
        yield f"http://127.0.0.1:{port}"
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


def _runs(uri: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def assert_every_run_and_metric(uri: str, live: Sequence[int] = range(JOBS),
                                total: int = JOBS) -> None:
    """One FINISHED run per job, none twice, each with its params and final metrics; the
    ``live`` jobs also with every step of ``train_loss``."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = _runs(uri)
    by_job = {int(run.data.tags["cesynth.wildcard.job"]): run for run in runs}
    assert len(runs) == total and sorted(by_job) == list(range(total))
    for index, run in by_job.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["index"] == str(index)
        assert {k: v for k, v in run.data.metrics.items() if k != "train_loss"} == \
            expected_metrics(index)
        if index in live:
            history = client.get_metric_history(run.info.run_id, "train_loss")
            assert sorted(m.step for m in history) == list(range(STEPS))


@pytest.mark.parametrize("store", ["server", "postgres_server", "sqlite"])
def test_sixteen_jobs_logging_at_once_lose_no_run_and_no_metric(store, request, tmp_path,
                                                                 monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if store != "sqlite":  # a server on SQLite, or on PostgreSQL
        uri = request.getfixturevalue(store)
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


# ---------------------------------------------------------------- the server killed mid-run

LIVE_JOBS = 8  # jobs that log while they work (training), across the outage
SHORT_JOBS = 8  # jobs that spool their run (every other rule), run while the server is down


def _live_job_across_an_outage(uri: str, index: int, log_dir: Path, logged: Any,
                               killed: Any) -> None:
    """A training-like job: one step logged, then (once the server is killed) the other steps,
    the final metrics and, for job 0, a model; every call while the server is down waits in
    MLflow's HTTP retry."""
    os.environ[ENV_TRACKING_URI] = uri

    def work() -> JobOutcome:
        tracker = tracking.MlflowTracker()
        tracker.log_step(0, {"loss": float(index)})
        logged.put(index)
        killed.wait(timeout=600)
        for step in range(1, STEPS):
            tracker.log_step(step, {"loss": index + step / STEPS})
        if index == 0:
            _log_a_model(tracker)
        return JobOutcome(metrics=expected_metrics(index), params={"index": index})

    run_job(Job("concurrent_job", {"job": str(index)}, str(log_dir / f"job-{index}.log")), work,
            live=True)


def _log_a_model(tracker: tracking.MlflowTracker) -> None:
    import numpy as np
    import torch

    torch.manual_seed(0)
    tracker.log_final(torch.nn.Linear(3, 1), np.zeros((1, 3), dtype=np.float32), [])


def _short_job(uri: str, index: int, results: Path) -> None:
    os.environ[ENV_TRACKING_URI] = uri
    os.environ[ENV_RESULTS_DIR] = str(results)
    run_job(Job("concurrent_job", {"job": str(index)}), lambda: JobOutcome(
        metrics=expected_metrics(index), params={"index": index}))


def _kill(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=60)


def jobs_across_a_killed_server(folder: Path, backend_uri: str, tmp_path: Path) -> str:
    """Start the server, the live jobs, kill the server (SIGKILL, its whole process group) once
    each has logged a step, run the short jobs while it is down, restart it on the same port
    and store, and send the spool as the workflow does when it ends; the server's URL."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(folder, backend_uri, port)
    context = mp.get_context("spawn")
    logged, killed = context.Queue(), context.Event()
    live = [context.Process(target=_live_job_across_an_outage,
                            args=(uri, i, tmp_path / "logs", logged, killed))
            for i in range(LIVE_JOBS)]
    try:
        for job in live:
            job.start()
        for _ in live:
            logged.get(timeout=600)
        _kill(server)
        killed.set()
        short = [context.Process(target=_short_job, args=(uri, LIVE_JOBS + i, tmp_path / "res"))
                 for i in range(SHORT_JOBS)]
        for job in short:
            job.start()
        for job in short:
            job.join(timeout=600)
        server = start_server(folder, backend_uri, port)
        for job in live:
            job.join(timeout=600)
        assert [job.exitcode for job in live + short] == [0] * (LIVE_JOBS + SHORT_JOBS)
        assert run_spool.send_spool(run_spool.spool_dir(tmp_path / "res"),
                                    end_running="all") == SHORT_JOBS
        assert_every_run_and_metric(uri, live=range(LIVE_JOBS),
                                    total=LIVE_JOBS + SHORT_JOBS)
        mlflow.set_tracking_uri(uri)
        (model_run,) = [r for r in _runs(uri) if r.data.tags["cesynth.wildcard.job"] == "0"]
        model = mlflow.pytorch.load_model(f"runs:/{model_run.info.run_id}/model")
        assert model.weight.shape == (1, 3)
    finally:
        for job in live:
            if job.is_alive():
                job.kill()
        stop(server)
    return uri


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_server_killed_and_restarted_mid_run_loses_no_run_metric_or_model(backend, request,
                                                                           tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "server"
    folder.mkdir()
    store = request.getfixturevalue("postgres") if backend == "postgres" else \
        f"sqlite:///{folder / 'mlflow.db'}"
    jobs_across_a_killed_server(folder, store, tmp_path)
