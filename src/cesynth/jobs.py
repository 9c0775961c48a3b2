"""Running one pipeline job: log routing, thread limits, the MLflow run and the one-line error.

The workflow scripts describe their job as a :class:`Job` (``Job.of(snakemake)`` reads the
rule, wildcards, log and threads of their ``snakemake`` object) and hand it with one function to
:func:`run_job`; this module never imports Snakemake.

A short job writes its MLflow run into the results' spool (:mod:`cesynth.run_spool`) and never
imports MLflow; the workflow sends the spool to the store. A job that logs while it works or
uses its run (training, the release) is ``live``: it opens its run in the store directly, and
sends what the spool holds first. Only what a job uses is imported here: the standard library.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cesynth import integrity, run_spool, tracking
from cesynth.errors import InputError

ENV_TRACKING_URI = "CESYNTH_TRACKING_URI"
ENV_EXPERIMENT = "CESYNTH_EXPERIMENT"
ENV_RESULTS_DIR = integrity.ENV_RESULTS_DIR

ENV_HTTP_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
LIVE_HTTP_RETRIES = "10"
"""MLflow's HTTP retries for a job that logs while it works (MLflow's limit; its default is 7):
a tracking server restarting makes the job wait about 10 minutes, not 4, before it fails."""

log = logging.getLogger("cesynth")


@dataclass(frozen=True)
class Job:
    """One pipeline job, as much of it as :func:`run_job` needs.

    Attributes:
        rule: the rule's name (the stage of the job's MLflow run).
        wildcards: the job's wildcards, e.g. ``{"subject": "07"}``.
        log: the job's log file; None logs to stderr.
        threads: the threads the job was given.
    """

    rule: str
    wildcards: Mapping[str, Any] = field(default_factory=dict)
    log: str | os.PathLike | None = None
    threads: int = 1

    @classmethod
    def of(cls, smk: Any) -> Job:
        """The job a Snakemake script object describes (its first log file, if any)."""
        return cls(rule=smk.rule, wildcards=dict(smk.wildcards),
                   log=smk.log[0] if len(smk.log) else None, threads=smk.threads)


@dataclass
class JobOutcome:
    """What a job reports: metrics and parameters for MLflow, files to attach as artifacts."""

    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


def limit_threads(threads: int) -> None:
    """Pass the job's thread count on to ITK (ANTs), OpenMP/BLAS and torch."""
    threads = max(1, int(threads))
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def configure_logging(log_path: str | os.PathLike | None) -> None:
    """Send log records (and stray stderr output) to the job's log file."""
    handlers: list[logging.Handler]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = log_file
        handlers = [logging.StreamHandler(log_file)]
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def tracking_settings() -> tuple[str, str]:
    """Tracking URI and experiment for jobs, from the environment the workflow exported."""
    uri = os.environ.get(ENV_TRACKING_URI) or tracking.default_tracking_uri(
        os.environ.get(ENV_RESULTS_DIR, "results"))
    return uri, os.environ.get(ENV_EXPERIMENT, tracking.DEFAULT_EXPERIMENT)


def results_dir() -> Path:
    """The workflow's results folder, from the environment it exported (default ``results``)."""
    return Path(os.environ.get(ENV_RESULTS_DIR, "results"))


def run_job(job: Job, work: Callable[[], JobOutcome | Mapping[str, Any] | None],
            params: Mapping[str, Any] | None = None, sweeps: Sequence[str] = (), *,
            live: bool = False) -> None:
    """Run ``work`` as ``job``, recorded as one MLflow run.

    Args:
        job: the job (rule, wildcards, log file, threads).
        work: does the job; returns a :class:`JobOutcome` or a dict of metrics.
        params: parameters to log to MLflow.
        sweeps: sweeps the job's experiment is a point of (its run goes under their parent).
        live: open the run in the store while the job works (``work`` may log to the active
            MLflow run); otherwise the run is spooled and sent later.
    """
    configure_logging(job.log)
    limit_threads(job.threads)
    wildcards = {key: str(value) for key, value in job.wildcards.items()}
    uri, experiment = tracking_settings()
    spool = run_spool.spool_dir(results_dir())
    run_kwargs = {"uri": uri, "experiment": experiment, "params": params,
                  "sweeps": list(sweeps or ())}
    try:
        if live:
            os.environ.setdefault(ENV_HTTP_RETRIES, LIVE_HTTP_RETRIES)
            send_finished_runs(spool)
            with tracking.stage_run(job.rule, wildcards, **run_kwargs):
                _log_live(_as_outcome(work()))
        else:
            with run_spool.spooled_run(job.rule, wildcards, spool=spool, **run_kwargs) as record:
                _log_to_record(record, _as_outcome(work()))
    except InputError as err:
        fail(err)
    log.info("done: %s %s", job.rule, wildcards)


def send_finished_runs(spool: Path) -> None:
    """Send the spool's finished runs before a live job starts; a failure only warns."""
    try:
        sent = run_spool.send_spool(spool, end_running="none")
    except Exception as err:  # the job's own work matters more than the spool's backlog
        log.warning("spooled MLflow runs not sent: %s: %s", type(err).__name__, err)
        return
    if sent:
        log.info("sent %d spooled MLflow runs to the store", sent)


def fail(err: InputError) -> None:
    """Report ``err`` as the one-line ``error: <who>: <problem>`` message and exit non-zero."""
    line = f"error: {err.who}: {err.problem}"
    log.error(line)
    print(line, file=sys.__stderr__, flush=True)
    raise SystemExit(1)


def _as_outcome(result: JobOutcome | Mapping[str, Any] | None) -> JobOutcome:
    if result is None:
        return JobOutcome()
    if isinstance(result, JobOutcome):
        return result
    return JobOutcome(metrics=dict(result))


def _log_live(outcome: JobOutcome) -> None:
    import mlflow

    _log_to_record(mlflow, outcome)


def _log_to_record(record: Any, outcome: JobOutcome) -> None:
    """Log ``outcome`` to a spooled :class:`run_spool.RunRecord` or to ``mlflow``'s active run."""
    metrics = tracking.numeric_metrics(outcome.metrics)
    if metrics:
        record.log_metrics(metrics)
    if outcome.params:
        record.log_params(tracking.flatten_params(outcome.params))
    for artifact in outcome.artifacts:
        if Path(artifact).exists():
            record.log_artifact(str(artifact))
