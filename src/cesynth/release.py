"""Find the checkpoint of a released model: a file, an MLflow run, or a registered model version.

``cesynth predict --model`` takes any of:

* a path to a checkpoint file (``checkpoint_final.pt`` or ``checkpoint_best.pt`` written by
  :mod:`cesynth.train`);
* ``runs:/<run_id>[/...]``: a training or release run; its checkpoint artifact is used
  (:data:`CHECKPOINT_ARTIFACTS`);
* ``models:/<name>/<version>``, ``models:/<name>/<alias>``, ``models:/<name>@<alias>`` or
  ``models:/<name>/latest``: a version of a model in the MLflow Model Registry; the checkpoint is
  the checkpoint artifact of the run that logged that version.

The training run logs the checkpoint as a run artifact and the network under ``model``
(:class:`cesynth.tracking.MlflowTracker`); registering ``runs:/<run_id>/model`` makes a version
whose run this module follows back to the checkpoint. The tracking store is the one MLflow
uses by default (``MLFLOW_TRACKING_URI``) unless a URI is given.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cesynth.cache import PATCH_SLICES
from cesynth.io import InputError

CHECKPOINT_ARTIFACTS = ("checkpoint_final.pt", "checkpoint_best.pt")
"""Checkpoint artifacts a run may hold, in the order :func:`resolve_model` takes them: a
release run holds the one evaluation used; a training run both (the final one is taken)."""
"""The run artifact that holds the model's weights, settings and preprocessing."""

RUNS_SCHEME = "runs:/"
MODELS_SCHEME = "models:/"
_MESSAGE_CHARS = 300
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<ref>[^/]+)|@(?P<alias>[^/]+))/?$")
_NOT_A_MODEL = "not a checkpoint file or an MLflow runs:/ or models:/ URI"


def resolve_model(uri_or_path: str | os.PathLike, dst_dir: str | os.PathLike | None = None,
                  *, tracking_uri: str | None = None) -> Path:
    """The local checkpoint file a model reference points to, downloaded when it is in MLflow.

    Args:
        uri_or_path: a checkpoint path, ``runs:/<run_id>/...`` or ``models:/<name>/<ref>``.
        dst_dir: folder to download into (created if needed); default a new temporary folder
            that the caller removes. Unused for a file path.
        tracking_uri: the MLflow tracking store; default MLflow's (``MLFLOW_TRACKING_URI``).

    Returns:
        The checkpoint file's path.

    Raises:
        InputError: naming ``uri_or_path``: neither an existing file nor an MLflow URI, an
            unknown run, model or version, or a run without the checkpoint artifact.
    """
    text = os.fspath(uri_or_path)
    if text.startswith(RUNS_SCHEME):
        run_id = _run_id_of_run_uri(text)
    elif text.startswith(MODELS_SCHEME):
        run_id = _run_id_of_model_uri(text, tracking_uri)
    elif Path(text).is_file():
        return Path(text)
    else:
        raise InputError(text, _NOT_A_MODEL)
    return _download_checkpoint(text, run_id, dst_dir, tracking_uri)


def _run_id_of_run_uri(uri: str) -> str:
    run_id = uri[len(RUNS_SCHEME):].strip("/").split("/", 1)[0]
    if not run_id:
        raise InputError(uri, "no run ID after runs:/")
    return run_id


def _run_id_of_model_uri(uri: str, tracking_uri: str | None) -> str:
    """The ID of the run that logged the model version a ``models:/`` URI names."""
    match = _MODEL_URI.match(uri)
    if match is None:
        raise InputError(uri, "expected models:/<name>/<version or alias> or "
                              "models:/<name>@<alias>")
    client = _client(tracking_uri)
    version = _model_version(client, uri, match["name"], match["ref"] or match["alias"])
    if not version.run_id:
        raise InputError(uri, f"model version {version.version} was not logged by an MLflow run "
                              "(no checkpoint to fetch)")
    return str(version.run_id)


def _model_version(client: Any, uri: str, name: str, ref: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        if ref == "latest":
            return _latest_version(client, uri, name)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as err:
        raise InputError(uri, f"no such registered model version ({_one_line(err)})") from err


def _latest_version(client: Any, uri: str, name: str) -> Any:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise InputError(uri, f"registered model {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def _download_checkpoint(uri: str, run_id: str, dst_dir: str | os.PathLike | None,
                         tracking_uri: str | None) -> Path:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    target = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="cesynth-"))
    target.mkdir(parents=True, exist_ok=True)
    wanted = " or ".join(CHECKPOINT_ARTIFACTS)
    try:
        logged = {a.path for a in _client(tracking_uri).list_artifacts(run_id)}
        name = next((n for n in CHECKPOINT_ARTIFACTS if n in logged), None)
        if name is None:
            raise InputError(uri, f"cannot fetch {wanted} of run {run_id} (not logged)")
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=name, dst_path=str(target), tracking_uri=tracking_uri)
    except (MlflowException, OSError) as err:
        raise InputError(uri, f"cannot fetch {wanted} of run {run_id} "
                              f"({_one_line(err)})") from err
    path = Path(local)
    if not path.is_file():
        raise InputError(uri, f"{name} of run {run_id} is not a file")
    return path


def register_release(checkpoint_path: str | os.PathLike, registered_name: str, *,
                     scores: Mapping[str, float] | None = None,
                     tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Log a trained model to the active MLflow run and register it as a new model version.

    The run gets the network (``model``, with signature and input example on the model grid),
    the checkpoint (one of :data:`CHECKPOINT_ARTIFACTS`, which :func:`resolve_model` follows) and
    the
    evaluation ``scores`` as metrics; the version is tagged with the scores and ``tags``.

    Args:
        checkpoint_path: a checkpoint of :mod:`cesynth.train` with its preprocessing record.
        registered_name: the registered model's name (created if new).
        scores: evaluation figures, e.g. ``{"setA_brain_psnr_mean": 28.2}``; non-finite ones
            are left out.
        tags: more version tags (experiment, config hash...).

    Returns:
        ``name``, ``version``, ``model_uri`` (``models:/<name>/<version>``), ``run_id`` and
        ``checkpoint_sha256``.

    Raises:
        InputError: an unusable checkpoint, or one without a preprocessing record.
    """
    import mlflow

    from cesynth.inference import load_generator
    from cesynth.tracking import MlflowTracker

    checkpoint_path = Path(checkpoint_path)
    generator = load_generator(checkpoint_path)
    run_id = mlflow.active_run().info.run_id
    MlflowTracker().log_final(generator.model, _input_example(generator, checkpoint_path),
                              [checkpoint_path])
    finite = {key: float(value) for key, value in (scores or {}).items()
              if math.isfinite(float(value))}
    mlflow.log_metrics(finite)
    version_tags = {**{key: f"{value:.6g}" for key, value in finite.items()}, **(tags or {}),
                    "checkpoint_sha256": generator.checkpoint_sha256,
                    "output": "synthetic images, not for diagnosis without review"}
    version = mlflow.register_model(f"runs:/{run_id}/model", registered_name, tags=version_tags)
    return {"name": registered_name, "version": int(version.version),
            "model_uri": f"{MODELS_SCHEME}{registered_name}/{version.version}", "run_id": run_id,
            "checkpoint_sha256": generator.checkpoint_sha256}


def _input_example(generator: Any, checkpoint_path: Path) -> np.ndarray:
    """A zero patch ``(1, C, 3, Y, X)`` on the checkpoint's model grid."""
    grid = generator.preprocessing.get("model_grid")
    if not grid:
        raise InputError(checkpoint_path, "checkpoint has no preprocessing record; retrain it "
                                          "with the workflow to release it")
    cols, rows, _ = (int(n) for n in grid)
    return np.zeros((1, len(generator.settings.modalities), PATCH_SLICES, rows, cols),
                    dtype=np.float32)


def _client(tracking_uri: str | None) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _one_line(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS - 3] + "..."


__all__ = ["CHECKPOINT_ARTIFACTS", "register_release", "resolve_model"]
