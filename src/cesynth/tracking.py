"""MLflow tracking for every job that does work.

Each job records one run in one experiment, tagged so that a run can be traced back to the rule,
the wildcards, the code (git commit), the configuration (hash) and the pipeline invocation that
produced it. The default store is SQLite under the results folder, so no server is needed.

MLflow creates an SQLite store by running its schema migrations on first use; several processes
doing that at once fail (alembic races, see FIELD-NOTES). :func:`init_store` therefore creates the
store under an exclusive file lock; the workflow calls it once before any job starts, and every job
calls it again (a cheap no-op once the store exists) so standalone runs are safe too.

A run never stays RUNNING when its job ends: an exception ends it FAILED, SIGTERM (SLURM's
timeout or ``scancel``, Snakemake stopping its jobs) or Ctrl-C ends it KILLED and the job exits
non-zero (143 on SIGTERM). A job killed outright (SIGKILL, the out-of-memory killer) cannot
end its own run; :func:`end_stale_runs`, called when the workflow ends, marks it KILLED.

The trainer reports through a :class:`TrainingTracker`; :class:`MlflowTracker` logs its params,
step and epoch metrics, the best model and the result files to the active run. This module
imports neither torch nor numpy at import time: every job imports it, the torch-free ones too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cesynth.signals import is_termination, sigterm_raises

if TYPE_CHECKING:  # torch and numpy are imported only where a model is logged
    import numpy as np
    from torch import nn

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "cesynth"
ENV_INVOCATION_ID = "CESYNTH_INVOCATION_ID"
ENV_CONFIG_HASH = "CESYNTH_CONFIG_HASH"
ENV_GIT_COMMIT = "CESYNTH_GIT_COMMIT"
TAG_PREFIX = "cesynth."


def default_tracking_uri(results_dir: str | os.PathLike, configured: str | None = None) -> str:
    """The store to use: ``MLFLOW_TRACKING_URI``, else the configured URI, else SQLite in results.

    Args:
        results_dir: the pipeline's results folder.
        configured: ``mlflow.tracking_uri`` from the config, if set.

    Returns:
        An MLflow tracking URI.
    """
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    if configured:
        return configured
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI, or None for any other store."""
    prefix = "sqlite:///"  # SQLAlchemy: what follows is the path, absolute when it starts with /
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


def init_store(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Create the tracking store and the experiment once, safely under concurrency.

    Args:
        uri: MLflow tracking URI.
        experiment: experiment name.

    Returns:
        The experiment ID.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    db_path = sqlite_path(uri)
    with store_lock(db_path):  # a server has no file to lock: another job may create it first
        client = mlflow.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_root(db_path))
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(experiment).experiment_id


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a configuration (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def git_commit(repo_dir: str | os.PathLike) -> str:
    """The commit of the code in ``repo_dir`` (``+dirty`` when it has uncommitted changes)."""
    try:
        commit = _git(repo_dir, "rev-parse", "HEAD")
        dirty = _git(repo_dir, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def new_invocation_id() -> str:
    """A fresh ID shared by all jobs of one pipeline invocation."""
    return uuid.uuid4().hex[:16]


def export_invocation_context(config: Mapping[str, Any], repo_dir: str | os.PathLike) -> dict:
    """Put invocation ID, config hash and git commit in the environment for every job to read.

    Jobs inherit the environment of the process that starts them (local subprocesses, SLURM's
    sbatch), so setting these once in the workflow process tags every job alike. An ID already
    present is kept, so a job that re-reads the workflow (cluster jobs do) stays in its invocation.

    Returns:
        The three values as a dict.
    """
    os.environ.setdefault(ENV_INVOCATION_ID, new_invocation_id())
    os.environ.setdefault(ENV_CONFIG_HASH, config_hash(config))
    os.environ.setdefault(ENV_GIT_COMMIT, git_commit(repo_dir))
    return {key: os.environ[key] for key in (ENV_INVOCATION_ID, ENV_CONFIG_HASH, ENV_GIT_COMMIT)}


def run_tags(rule: str, wildcards: Mapping[str, str]) -> dict[str, str]:
    """The tags every cesynth run carries."""
    tags = {
        f"{TAG_PREFIX}rule": rule,
        f"{TAG_PREFIX}invocation_id": os.environ.get(ENV_INVOCATION_ID, "standalone"),
        f"{TAG_PREFIX}config_hash": os.environ.get(ENV_CONFIG_HASH, "n/a"),
        f"{TAG_PREFIX}git_commit": os.environ.get(ENV_GIT_COMMIT, "unknown"),
    }
    for name, value in wildcards.items():
        tags[f"{TAG_PREFIX}wildcard.{name}"] = str(value)
    return tags


def run_name(rule: str, wildcards: Mapping[str, str]) -> str:
    """A readable run name such as ``fit_adc[subject=01]``."""
    if not wildcards:
        return rule
    inner = ",".join(f"{key}={value}" for key, value in wildcards.items())
    return f"{rule}[{inner}]"


@contextlib.contextmanager
def stage_run(
    rule: str,
    wildcards: Mapping[str, str] | None = None,
    *,
    uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    params: Mapping[str, Any] | None = None,
    sweeps: Sequence[str] = (),
) -> Iterator[Any]:
    """Record one MLflow run around a job; it ends FAILED if the block raises, KILLED on SIGTERM.

    Args:
        rule: the rule (or command) name.
        wildcards: the job's wildcards (subject, experiment...).
        uri: tracking URI.
        experiment: experiment name.
        params: parameters to log at the start.
        sweeps: the sweeps the job's experiment is a point of; the run becomes a child of the
            first one's parent run (:func:`sweep_parent_runs`) and is tagged with all.

    Yields:
        The active ``mlflow.ActiveRun``; log with ``mlflow.log_metrics`` etc. inside the block.
    """
    import mlflow

    wildcards = dict(wildcards or {})
    experiment_id = init_store(uri, experiment)
    mlflow.set_tracking_uri(uri)
    tags = run_tags(rule, wildcards)
    if sweeps:
        parents = sweep_parent_runs(uri, experiment, sweeps)
        tags |= {f"{TAG_PREFIX}sweeps": ",".join(sweeps), PARENT_RUN_TAG: parents[sweeps[0]]}
    tags[ATTEMPT_TAG] = uuid.uuid4().hex
    with sigterm_raises():
        active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(rule, wildcards),
                                  tags=tags)
        try:
            drop_duplicate_runs(mlflow.MlflowClient(tracking_uri=uri), experiment_id,
                                ATTEMPT_TAG, tags[ATTEMPT_TAG], keep=active.info.run_id)
            if params:
                mlflow.log_params(flatten_params(params))
            yield active
        except BaseException as err:
            with contextlib.suppress(Exception):  # never hide the job's own error
                mlflow.end_run(end_status(err))
            raise
        mlflow.end_run("FINISHED")


ATTEMPT_TAG = f"{TAG_PREFIX}attempt"
"""Tag of a fresh ID per run a job opens in the store (see :func:`drop_duplicate_runs`)."""


def drop_duplicate_runs(client: Any, experiment_id: str, tag: str, value: str,
                        keep: str) -> list[str]:
    """Delete the runs tagged ``tag = value`` other than ``keep``: one run was created twice.

    MLflow's HTTP client retries a request whose answer was lost (a tracking server killed or
    restarted mid-request, a dropped connection), and a ``runs/create`` that the server had
    already committed then creates a second run. The duplicate holds nothing but its tags; it is
    deleted (MLflow's soft delete), so every job shows exactly one run.

    Returns:
        The IDs of the runs deleted.
    """
    found = client.search_runs([experiment_id], f"tags.`{tag}` = '{value}'", max_results=100)
    extra = [run.info.run_id for run in found if run.info.run_id != keep]
    for run_id in extra:
        client.delete_run(run_id)
    if extra:
        log.warning("run %s was created %d times (a retried request); the copies %s deleted",
                    keep, len(extra) + 1, ", ".join(extra))
    return extra


def end_stale_runs(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> list[str]:
    """Mark KILLED the runs of this invocation still RUNNING once its jobs have ended.

    A job killed outright (SIGKILL, the out-of-memory killer, SLURM after its grace period)
    cannot end its own run. The workflow calls this when it ends, success or failure, when no
    job of the invocation (``CESYNTH_INVOCATION_ID``) runs any more; other invocations sharing
    the store are left alone.

    Returns:
        The IDs of the runs marked KILLED.
    """
    import mlflow

    invocation = os.environ.get(ENV_INVOCATION_ID)
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if not invocation or found is None:
        return []
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_PREFIX}invocation_id` = '{invocation}'"
    stale = [run.info.run_id for run in client.search_runs([found.experiment_id], query,
                                                           max_results=10000)]
    for run_id in stale:
        client.set_terminated(run_id, "KILLED")
    return stale


PARENT_RUN_TAG = "mlflow.parentRunId"
SWEEP_TAG = f"{TAG_PREFIX}sweep_parent"


def sweep_parent_runs(uri: str, experiment: str, sweeps: Sequence[str]) -> dict[str, str]:
    """The parent run of each sweep (one per sweep name and store), created on first use.

    The workflow creates them once before any job starts (so parallel jobs never race to create
    two); a job finds its sweep's parent by the tag.

    Args:
        uri: tracking URI.
        experiment: experiment name.
        sweeps: sweep names.

    Returns:
        Sweep name -> run ID of its parent run.
    """
    import mlflow

    experiment_id = init_store(uri, experiment)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parents = {}
    with store_lock(sqlite_path(uri)):
        for sweep in sweeps:
            found = client.search_runs([experiment_id], f"tags.`{SWEEP_TAG}` = '{sweep}'",
                                       max_results=1)
            if found:
                parents[sweep] = found[0].info.run_id
                continue
            run = client.create_run(experiment_id, run_name=f"sweep[{sweep}]",
                                    tags={**run_tags("sweep", {"sweep": sweep}), SWEEP_TAG: sweep})
            client.set_terminated(run.info.run_id, "FINISHED")
            parents[sweep] = run.info.run_id
    return parents


def log_to_sweeps(uri: str, experiment: str, sweeps: Sequence[str],
                  artifacts: Sequence[str | os.PathLike]) -> None:
    """Attach result files (the paper's tables and figures) to each sweep's parent run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    for run_id in sweep_parent_runs(uri, experiment, sweeps).values():
        for artifact in artifacts:
            client.log_artifact(run_id, str(artifact))


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested parameters to ``a.b.c`` keys with string values (at most 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of ``values`` (booleans as 0/1), for ``mlflow.log_metrics``."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            metrics[key] = float(value)
        elif isinstance(value, int | float) and value == value and abs(value) != float("inf"):
            metrics[key] = float(value)
    return metrics


# ---------------------------------------------------------------- the trainer's tracker


class TrainingTracker(Protocol):
    """Where the trainer reports: MLflow (:class:`MlflowTracker`) or anything with these."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the resolved settings."""

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Record one step's loss terms."""

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        """Record one epoch's validation metrics."""

    def log_final(self, model: nn.Module, input_example: np.ndarray,
                  artifacts: Sequence[Path]) -> None:
        """Record the best model and the result files."""


class MlflowTracker:
    """Logs to the active MLflow run (params, step and epoch metrics, the model, artifacts)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the flattened settings as params (idempotent on a resumed run)."""
        import mlflow

        run = mlflow.active_run()
        logged = mlflow.get_run(run.info.run_id).data.params if run else {}
        fresh = {k: v for k, v in flatten_params(params).items() if k not in logged}
        if fresh:
            mlflow.log_params(fresh)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Log loss terms as ``train_<name>`` at the global step."""
        import mlflow

        mlflow.log_metrics({f"train_{k}": float(v) for k, v in values.items()}, step=step)

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        """Log validation metrics as ``val_<name>`` at the global step."""
        import mlflow

        finite = {f"val_{k}": float(v) for k, v in values.items() if math.isfinite(v)}
        mlflow.log_metrics(finite, step=step)

    def log_final(self, model: nn.Module, input_example: np.ndarray,
                  artifacts: Sequence[Path]) -> None:
        """Log the model (with signature and input example) and the artifact files."""
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        # "pickle" keeps the nn.Module (any batch size); "pt2" would fix the example's batch.
        # Explicit requirements: inferring them re-imports the model in a subprocess (slow).
        # The pickled module needs cesynth importable where it is loaded (cesynth predict).
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                 signature=infer_signature(input_example, output),
                                 input_example=input_example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                   f"numpy=={np.__version__}"])
        for path in artifacts:
            if Path(path).exists():
                mlflow.log_artifact(str(path))


def default_tracker() -> TrainingTracker | None:
    """An :class:`MlflowTracker` when an MLflow run is active in this process, else None."""
    mlflow = sys.modules.get("mlflow")  # not imported means no run can be active
    if mlflow is not None and mlflow.active_run() is not None:
        return MlflowTracker()
    return None


def end_status(err: BaseException) -> str:
    """KILLED after Ctrl-C or SIGTERM (any ``SystemExit`` with status 143), else FAILED."""
    terminated = is_termination(err)
    if terminated or isinstance(err, KeyboardInterrupt):
        log.error("run ended KILLED (%s)", "SIGTERM" if terminated else "Ctrl-C")
        return "KILLED"
    return "FAILED"


@contextlib.contextmanager
def store_lock(db_path: Path | None) -> Iterator[None]:
    """An exclusive lock on ``<db_path>.lock`` for the block (none for None: a server)."""
    if db_path is None:
        yield
        return
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with open(db_path.with_suffix(db_path.suffix + ".lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _artifact_root(db_path: Path | None) -> str | None:
    if db_path is None:
        return None
    return (db_path.parent / "mlflow-artifacts").resolve().as_uri()


def _git(repo_dir: str | os.PathLike, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo_dir), *args], capture_output=True, text=True, check=True, timeout=10
    )
    return result.stdout.strip()
