"""Running one pipeline job: log routing, thread limits, the MLflow run and the one-line error.

The workflow scripts describe their job as a :class:`Job` (``Job.of(snakemake)`` reads the
rule, wildcards, log and threads of their ``snakemake`` object) and hand it with one function to
:func:`run_job`; this module never imports Snakemake.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cesynth import tracking
from cesynth.io import InputError

ENV_TRACKING_URI = "CESYNTH_TRACKING_URI"
ENV_EXPERIMENT = "CESYNTH_EXPERIMENT"
ENV_RESULTS_DIR = "CESYNTH_RESULTS_DIR"

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


def run_job(job: Job, work: Callable[[], JobOutcome | Mapping[str, Any] | None],
            params: Mapping[str, Any] | None = None, sweeps: Sequence[str] = ()) -> None:
    """Run ``work`` as ``job``, recorded as one MLflow run.

    Args:
        job: the job (rule, wildcards, log file, threads).
        work: does the job; returns a :class:`JobOutcome` or a dict of metrics.
        params: parameters to log to MLflow.
        sweeps: sweeps the job's experiment is a point of (its run goes under their parent).
    """
    configure_logging(job.log)
    limit_threads(job.threads)
    wildcards = {key: str(value) for key, value in job.wildcards.items()}
    uri, experiment = tracking_settings()
    try:
        with tracking.stage_run(job.rule, wildcards, uri=uri, experiment=experiment,
                                params=params, sweeps=list(sweeps or ())):
            outcome = _as_outcome(work())
            _log_outcome(outcome)
    except InputError as err:
        fail(err)
    log.info("done: %s %s", job.rule, wildcards)


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


def _log_outcome(outcome: JobOutcome) -> None:
    import mlflow

    metrics = tracking.numeric_metrics(outcome.metrics)
    if metrics:
        mlflow.log_metrics(metrics)
    if outcome.params:
        mlflow.log_params(tracking.flatten_params(outcome.params))
    for artifact in outcome.artifacts:
        if Path(artifact).exists():
            mlflow.log_artifact(str(artifact))
