"""MLflow runs of short jobs, written without importing MLflow and sent to the store later.

Importing MLflow and opening a run in the store cost a job about 3 s of CPU on 2 cores, more than
most per-subject steps' own work (benchmarks/RESULTS.md, job start-up). A short job therefore
writes its run as a JSON record into the spool folder of the results (``<results>/mlflow-spool``):
its tags, params, metrics, artifacts, start and end times and status. The record is written
RUNNING when the job starts and replaced by the finished one when it ends, each time atomically.

:func:`send_spool` logs the records to their store (each with its own URI and experiment), one
sender at a time, and removes each record once it is in the store. The workflow sends the spool
when it starts and when it ends, success or failure; every job that imports MLflow anyway
(training, release) sends what has finished when it starts, so the store follows a long run; and
``cesynth send-runs`` sends it by hand (with ``--immediate-submit`` the jobs outlive the
workflow). A run is created once per record: the record's name is a tag of its run, and a
second run of the same record (a sender that died before noting the run it had created, or a
create request that MLflow's HTTP client retried after a tracking server went down mid-answer)
is deleted. A record still RUNNING once its invocation is over is the run of a job killed outright
and is sent KILLED, as :func:`cesynth.tracking.end_stale_runs` ends such runs of the jobs that log
directly. A sender that dies half-way leaves the run ID in the record, so the next one completes
that run instead of making a second.

Standard library only at import time: every short job imports this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cesynth import tracking
from cesynth.signals import sigterm_raises

log = logging.getLogger(__name__)

SPOOL_DIR_NAME = "mlflow-spool"
RECORD_SUFFIX = ".run.json"
RUNNING = "RUNNING"
BATCH_PARAMS, BATCH_METRICS = 100, 1000
END_RUNNING = ("none", "others", "all")
RECORD_TAG = f"{tracking.TAG_PREFIX}spool_record"


@dataclass
class RunRecord:
    """One job's MLflow run, as the job saw it.

    Attributes:
        rule: the rule (the run's stage).
        wildcards: the job's wildcards.
        uri: the tracking store the run belongs in.
        experiment: the experiment name.
        tags: the run's tags (:func:`cesynth.tracking.run_tags`).
        sweeps: the sweeps the run is a point of (its parent run is the first one's).
        params: flat string parameters.
        metrics: finite float metrics.
        artifacts: files to attach, as absolute paths.
        start_ms, end_ms: start and end, milliseconds since the epoch (end None while running).
        status: RUNNING, FINISHED, FAILED or KILLED.
        run_id: the MLflow run once a sender created it (a half-sent record keeps it).
    """

    rule: str
    wildcards: dict[str, str]
    uri: str
    experiment: str
    tags: dict[str, str]
    sweeps: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    start_ms: int = field(default_factory=lambda: _now_ms())
    end_ms: int | None = None
    status: str = RUNNING
    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self.metrics.update(metrics)

    def log_params(self, params: Mapping[str, str]) -> None:
        self.params.update(params)

    def log_artifact(self, path: str | os.PathLike) -> None:
        self.artifacts.append(str(Path(path).resolve()))

    @property
    def invocation(self) -> str:
        return self.tags.get(f"{tracking.TAG_PREFIX}invocation_id", "standalone")


def spool_dir(results_dir: str | os.PathLike) -> Path:
    """The spool folder of a results folder."""
    return Path(results_dir) / SPOOL_DIR_NAME


@contextlib.contextmanager
def spooled_run(rule: str, wildcards: Mapping[str, str] | None = None, *, uri: str,
                experiment: str, spool: str | os.PathLike, params: Mapping[str, Any] | None = None,
                sweeps: Sequence[str] = ()) -> Iterator[RunRecord]:
    """Record one job's run in the spool; it ends FAILED if the block raises, KILLED on SIGTERM.

    Yields:
        The :class:`RunRecord`; log to it with its ``log_*`` methods inside the block.
    """
    wildcards = {key: str(value) for key, value in (wildcards or {}).items()}
    tags = tracking.run_tags(rule, wildcards)
    if sweeps:
        tags[f"{tracking.TAG_PREFIX}sweeps"] = ",".join(sweeps)
    record = RunRecord(rule=rule, wildcards=wildcards, uri=uri, experiment=experiment, tags=tags,
                       sweeps=list(sweeps), params=tracking.flatten_params(params or {}))
    path = Path(spool) / f"{uuid.uuid4().hex}{RECORD_SUFFIX}"
    with sigterm_raises():
        _write_record(record, path)
        try:
            yield record
        except BaseException as err:
            with contextlib.suppress(Exception):  # never hide the job's own error
                _end(record, path, tracking.end_status(err))
            raise
        _end(record, path, "FINISHED")


def send_spool(spool: str | os.PathLike, *, end_running: str = "others") -> int:
    """Log the spooled runs to their stores and remove their records.

    Args:
        spool: the spool folder (missing: nothing to send).
        end_running: which records still RUNNING belong to jobs that are over (killed outright)
            and are sent KILLED: ``"none"`` (jobs may run: leave them all), ``"others"`` (those
            of every invocation but this one, ``CESYNTH_INVOCATION_ID``: true when a workflow
            starts, as Snakemake locks its working folder) or ``"all"`` (no job runs any more).

    Returns:
        The number of runs sent.
    """
    if end_running not in END_RUNNING:
        raise ValueError(f"end_running must be one of {END_RUNNING}, not {end_running!r}")
    folder = Path(spool)
    if not folder.is_dir():
        return 0
    current = os.environ.get(tracking.ENV_INVOCATION_ID)
    sent, stores = 0, _Stores()
    with tracking.store_lock(folder / ".send"):  # one sender at a time
        for path in sorted(folder.glob(f"*{RECORD_SUFFIX}")):
            record = _read_record(path)
            if record is None:
                continue
            if record.status == RUNNING:
                if not _is_over(record, end_running, current):
                    continue
                record.status, record.end_ms = "KILLED", _now_ms()
            _send(record, path, stores)
            path.unlink()
            sent += 1
    return sent


def _is_over(record: RunRecord, end_running: str, current: str | None) -> bool:
    return end_running == "all" or (end_running == "others" and record.invocation != current)


def spooled_count(spool: str | os.PathLike) -> int:
    """How many runs wait in the spool (running jobs' included)."""
    folder = Path(spool)
    return len(list(folder.glob(f"*{RECORD_SUFFIX}"))) if folder.is_dir() else 0


class _Stores:
    """What one send looks up once per store: clients, experiment IDs, sweep parent runs."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._experiments: dict[tuple[str, str], str] = {}
        self._parents: dict[tuple[str, str, str], str] = {}

    def client(self, uri: str) -> Any:
        import mlflow

        if uri not in self._clients:
            self._clients[uri] = mlflow.MlflowClient(tracking_uri=uri)
        return self._clients[uri]

    def experiment_id(self, uri: str, experiment: str) -> str:
        if (uri, experiment) not in self._experiments:
            self._experiments[uri, experiment] = tracking.init_store(uri, experiment)
        return self._experiments[uri, experiment]

    def sweep_parent(self, uri: str, experiment: str, sweep: str) -> str:
        if (uri, experiment, sweep) not in self._parents:
            parents = tracking.sweep_parent_runs(uri, experiment, [sweep])
            self._parents[uri, experiment, sweep] = parents[sweep]
        return self._parents[uri, experiment, sweep]


def _send(record: RunRecord, path: Path, stores: _Stores) -> None:
    from mlflow.entities import Metric, Param

    client = stores.client(record.uri)
    if record.run_id is None:
        experiment_id = stores.experiment_id(record.uri, record.experiment)
        tags = dict(record.tags)
        if record.sweeps:
            tags[tracking.PARENT_RUN_TAG] = stores.sweep_parent(record.uri, record.experiment,
                                                                record.sweeps[0])
        tags[RECORD_TAG] = path.name.removesuffix(RECORD_SUFFIX)
        run = client.create_run(experiment_id, start_time=record.start_ms, tags=tags,
                                run_name=tracking.run_name(record.rule, record.wildcards))
        record.run_id = run.info.run_id
        # an earlier sender that died before noting its run, or a create request retried
        tracking.drop_duplicate_runs(client, experiment_id, RECORD_TAG, tags[RECORD_TAG],
                                     keep=record.run_id)
        _write_record(record, path)  # a sender that dies from here on completes this run
    params = [Param(k, v) for k, v in record.params.items()]
    metrics = [Metric(k, v, record.end_ms, 0) for k, v in record.metrics.items()]
    for batch in range(max(_batches(params, BATCH_PARAMS), _batches(metrics, BATCH_METRICS))):
        client.log_batch(record.run_id,  # within MLflow's limits per call
                         params=params[batch * BATCH_PARAMS:(batch + 1) * BATCH_PARAMS],
                         metrics=metrics[batch * BATCH_METRICS:(batch + 1) * BATCH_METRICS])
    for artifact in record.artifacts:
        if Path(artifact).exists():
            client.log_artifact(record.run_id, artifact)
        else:
            log.warning("%s: artifact %s is gone; the run is sent without it",
                        tracking.run_name(record.rule, record.wildcards), artifact)
    client.set_terminated(record.run_id, record.status, end_time=record.end_ms)


def _batches(items: list, size: int) -> int:
    return -(-len(items) // size)


def _end(record: RunRecord, path: Path, status: str) -> None:
    record.status, record.end_ms = status, _now_ms()
    _write_record(record, path)


def _write_record(record: RunRecord, path: Path) -> None:
    # cesynth.io.atomic_path does this too, but importing io costs a short job nibabel and pandas
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), sort_keys=True))
    os.replace(tmp, path)


def _read_record(path: Path) -> RunRecord | None:
    try:
        return RunRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None  # sent by another sender before this one took the lock
    except (ValueError, TypeError) as err:  # not a record this version can read: leave it
        log.warning("%s: not a spooled MLflow run (%s); left in the spool", path, err)
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["RunRecord", "SPOOL_DIR_NAME", "send_spool", "spool_dir", "spooled_count",
           "spooled_run"]
