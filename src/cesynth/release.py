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
uses by default (``MLFLOW_TRACKING_URI``) unless a URI is given; with neither, an MLflow URI is
refused (MLflow would silently create an empty ``mlflow.db`` in the current folder).

A release may carry the cascade models (T1 -> T2, T1 -> ADC; :data:`CASCADE_TARGETS`) that fill
an input a patient lacks: :func:`register_release` logs them beside the checkpoint as
``cascade/<target>.pt`` and :func:`resolve_cascade` finds them again (for a checkpoint file: the
workflow's sibling folders ``../cascade-<target>/<same file name>``).

Every release is registered; the registry alias ``champion`` (:data:`CHAMPION_ALIAS`) moves to
the new version only when its release gate passes (:mod:`cesynth.release_gate`): the validation
brain PSNR of the released weights is at least a floor and not worse than the current
champion's beyond a tolerance. The version is tagged ``gate: passed`` or
``gate: failed: <reason>`` either way. The gate reads the validation split only, never the
reported test scores.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cesynth.cache import PATCH_SLICES
from cesynth.experiments import CASCADE_PREFIX, CASCADE_TARGETS
from cesynth.io import InputError, one_line_error

CHECKPOINT_ARTIFACTS = ("checkpoint_final.pt", "checkpoint_best.pt")
"""Checkpoint artifacts a run may hold, in the order :func:`resolve_model` takes them: a
release run holds the one evaluation used; a training run both (the final one is taken)."""
CASCADE_DIR = "cascade"
"""The release run's folder of cascade checkpoints, one ``<target>.pt`` per cascade target."""

RUNS_SCHEME = "runs:/"
MODELS_SCHEME = "models:/"
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
            MLflow URI with no tracking store set, an unknown run, model or version, or a run
            without the checkpoint artifact.
    """
    text = os.fspath(uri_or_path)
    run_id = _mlflow_run_id(text, tracking_uri)
    if run_id is None:
        return _checkpoint_file(text)
    return _download_checkpoint(text, run_id, dst_dir, tracking_uri)


def resolve_cascade(uri_or_path: str | os.PathLike, dst_dir: str | os.PathLike | None = None,
                    *, tracking_uri: str | None = None) -> dict[str, Path]:
    """The cascade checkpoints (T1 -> T2, T1 -> ADC) that go with a released model.

    For an MLflow ``runs:/`` or ``models:/`` URI: the run's ``cascade/<target>.pt`` artifacts,
    downloaded to ``dst_dir/cascade/``. For a checkpoint file: the checkpoint of the same name in
    the sibling folders ``cascade-T2w`` and ``cascade-adc`` (the workflow's layout
    ``results/train/<experiment>/checkpoint_final.pt``), where they exist.

    Args:
        uri_or_path: the model reference :func:`resolve_model` takes.
        dst_dir: folder to download into; default a new temporary folder. Unused for a file.
        tracking_uri: the MLflow tracking store; default MLflow's (``MLFLOW_TRACKING_URI``).

    Returns:
        Cascade target (``T2w``, ``adc``) -> local checkpoint path; empty when there is none.

    Raises:
        InputError: naming ``uri_or_path``: not a model reference, an MLflow URI with no
            tracking store set, or a failing download.
    """
    text = os.fspath(uri_or_path)
    run_id = _mlflow_run_id(text, tracking_uri)
    if run_id is None:
        return _sibling_cascades(_checkpoint_file(text))
    return _download_cascades(text, run_id, dst_dir, tracking_uri)


def check_cascade(cascade: Any, target: str, who: str, *, model_grid: Sequence[int],
                  normalise: str) -> None:
    """Check that a cascade model fills ``target`` for a CE-T1 model with this preprocessing.

    A cascade model's output is fed to the CE-T1 model on its model grid, so it must have been
    trained on the same grid and with the same normalisation.

    Args:
        cascade: the loaded cascade model (:class:`cesynth.inference.Generator`).
        target: the input it is to fill (``T2w`` or ``adc``).
        who: names the cascade checkpoint in errors.
        model_grid: the CE-T1 model's model grid.
        normalise: the CE-T1 model's normalisation method.

    Raises:
        InputError: naming ``who``: it synthesizes another modality, takes more than the T1,
            or was trained with another model grid or normalisation (or has no record of them).
    """
    settings = cascade.settings
    if settings.target != target or tuple(settings.modalities) != ("T1w",):
        raise InputError(who, f"not a T1 -> {target} cascade model (it takes "
                              f"{','.join(settings.modalities)} to {settings.target})")
    stored = cascade.preprocessing
    if not stored.get("model_grid") or not stored.get("normalise"):
        raise InputError(who, f"cascade model for {target} has no model grid or normalisation "
                              "in its preprocessing record; retrain it with the workflow, or "
                              "use --no-cascade")
    theirs = (_grid_list(stored.get("model_grid")), stored.get("normalise"))
    ours = (_grid_list(model_grid), normalise)
    if theirs != ours:
        raise InputError(who, f"cascade model for {target} was trained on model grid "
                              f"{theirs[0]} with {theirs[1]} normalisation, the CE-T1 model on "
                              f"{ours[0]} with {ours[1]}; use a cascade trained like the CE-T1 "
                              "model, or --no-cascade")


def _grid_list(grid: Sequence[int] | None) -> list[int] | None:
    return [int(n) for n in grid] if grid else None


def _mlflow_run_id(text: str, tracking_uri: str | None) -> str | None:
    """The run a ``runs:/`` or ``models:/`` URI leads to; None for anything else."""
    if text.startswith((RUNS_SCHEME, MODELS_SCHEME)):
        _require_store(text, tracking_uri)
    if text.startswith(RUNS_SCHEME):
        return _run_id_of_run_uri(text)
    if text.startswith(MODELS_SCHEME):
        return _run_id_of_model_uri(text, tracking_uri)
    return None


def _require_store(text: str, tracking_uri: str | None) -> None:
    """Refuse an MLflow URI when no store is named: MLflow would open a new, empty ``mlflow.db``
    in the current folder and report the model as unknown."""
    if not tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):  # set_tracking_uri sets it
        raise InputError(text, "no MLflow tracking store set: set MLFLOW_TRACKING_URI to the store "
                               "that holds it (sqlite:///<results>/mlflow.db or http://<server>)")


def _checkpoint_file(text: str) -> Path:
    if not Path(text).is_file():
        raise InputError(text, _NOT_A_MODEL)
    return Path(text)


def _sibling_cascades(checkpoint: Path) -> dict[str, Path]:
    """``../cascade-<target>/<checkpoint's name>`` for each target, where it is a file."""
    train_dir = checkpoint.absolute().parent.parent
    found = {}
    for target in CASCADE_TARGETS:
        candidate = train_dir / f"{CASCADE_PREFIX}{target}" / checkpoint.name
        if candidate.is_file() and candidate.resolve() != checkpoint.resolve():
            found[target] = candidate
    return found


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
    client = registry_client(tracking_uri)
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
        raise InputError(uri, f"no such registered model version ({one_line_error(err)})") from err


def _latest_version(client: Any, uri: str, name: str) -> Any:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise InputError(uri, f"registered model {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def _download_checkpoint(uri: str, run_id: str, dst_dir: str | os.PathLike | None,
                         tracking_uri: str | None) -> Path:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    wanted = " or ".join(CHECKPOINT_ARTIFACTS)
    try:
        logged = {a.path for a in registry_client(tracking_uri).list_artifacts(run_id)}
        name = next((n for n in CHECKPOINT_ARTIFACTS if n in logged), None)
        if name is None:
            raise InputError(uri, f"cannot fetch {wanted} of run {run_id} (not logged)")
        target = _download_dir(dst_dir)
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=name, dst_path=str(target), tracking_uri=tracking_uri)
    except (MlflowException, OSError) as err:
        raise InputError(uri, f"cannot fetch {wanted} of run {run_id} "
                              f"({one_line_error(err)})") from err
    path = Path(local)
    if not path.is_file():
        raise InputError(uri, f"{name} of run {run_id} is not a file")
    return path


def _download_cascades(uri: str, run_id: str, dst_dir: str | os.PathLike | None,
                       tracking_uri: str | None) -> dict[str, Path]:
    """Download the run's ``cascade/<target>.pt`` artifacts (none: an empty mapping)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        logged = {a.path for a in registry_client(tracking_uri).list_artifacts(run_id, CASCADE_DIR)}
        names = {t: f"{CASCADE_DIR}/{t}.pt" for t in CASCADE_TARGETS
                 if f"{CASCADE_DIR}/{t}.pt" in logged}
        target = _download_dir(Path(_download_dir(dst_dir), CASCADE_DIR)) if names else None
        return {t: Path(mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=name, dst_path=str(target),
                    tracking_uri=tracking_uri))
                for t, name in names.items()}
    except (MlflowException, OSError) as err:
        raise InputError(uri, f"cannot fetch the cascade models of run {run_id} "
                              f"({one_line_error(err)})") from err


def _download_dir(dst_dir: str | os.PathLike | None) -> Path:
    target = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="cesynth-"))
    target.mkdir(parents=True, exist_ok=True)
    return target


def register_release(checkpoint_path: str | os.PathLike, registered_name: str, *,
                     scores: Mapping[str, float] | None = None,
                     tags: Mapping[str, str] | None = None,
                     cascade: Mapping[str, str | os.PathLike] | None = None) -> dict[str, Any]:
    """Log a trained model to the active MLflow run and register it as a new model version.

    The run gets the network (``model``, with signature and input example on the model grid),
    the checkpoint (one of :data:`CHECKPOINT_ARTIFACTS`, which :func:`resolve_model` follows),
    the cascade checkpoints as ``cascade/<target>.pt`` (:func:`resolve_cascade`) and the
    evaluation ``scores`` as metrics; the version is tagged with the scores, ``tags``,
    ``cascade`` (e.g. ``T2w,adc``) and each cascade checkpoint's SHA-256.

    Args:
        checkpoint_path: a checkpoint of :mod:`cesynth.train` with its preprocessing record.
        registered_name: the registered model's name (created if new).
        scores: evaluation figures, e.g. ``{"setA_brain_psnr_mean": 28.2}``; non-finite ones
            are left out.
        tags: more version tags (experiment, config hash...).
        cascade: cascade target (``T2w``, ``adc``) -> its T1 -> target checkpoint, trained on
            the same model grid and normalisation as ``checkpoint_path``.

    Returns:
        ``name``, ``version``, ``model_uri`` (``models:/<name>/<version>``), ``run_id``,
        ``checkpoint_sha256`` and ``cascade`` (target -> checkpoint SHA-256).

    Raises:
        InputError: an unusable checkpoint, one without a preprocessing record, or an unusable
            cascade checkpoint; nothing is logged then.
    """
    import mlflow

    from cesynth.inference import load_generator
    from cesynth.tracking import MlflowTracker

    checkpoint_path = Path(checkpoint_path)
    generator = load_generator(checkpoint_path)
    example = _input_example(generator, checkpoint_path)
    cascades = _release_cascades(generator, cascade or {})
    if checkpoint_path.name not in CHECKPOINT_ARTIFACTS:
        raise InputError(checkpoint_path, "a release holds " + " or ".join(CHECKPOINT_ARTIFACTS)
                         + f", which predict fetches; not {checkpoint_path.name}")
    run_id = mlflow.active_run().info.run_id
    MlflowTracker().log_final(generator.model, example, [checkpoint_path])
    _log_cascades(cascade or {})
    finite = {key: float(value) for key, value in (scores or {}).items()
              if math.isfinite(float(value))}
    mlflow.log_metrics(finite)
    version_tags = {**{key: f"{value:.6g}" for key, value in finite.items()}, **(tags or {}),
                    **_cascade_tags(cascades),
                    "checkpoint_sha256": generator.checkpoint_sha256,
                    "output": "synthetic images, not for diagnosis without review"}
    version = mlflow.register_model(f"runs:/{run_id}/model", registered_name, tags=version_tags)
    return {"name": registered_name, "version": int(version.version),
            "model_uri": f"{MODELS_SCHEME}{registered_name}/{version.version}", "run_id": run_id,
            "checkpoint_sha256": generator.checkpoint_sha256, "cascade": cascades}


def _release_cascades(generator: Any, cascade: Mapping[str, str | os.PathLike]
                      ) -> dict[str, str]:
    """Check each cascade checkpoint against the released model's preprocessing.

    Returns:
        Target -> the cascade checkpoint's SHA-256, in :data:`CASCADE_TARGETS` order.
    """
    from cesynth.inference import load_generator

    unknown = sorted(set(cascade) - set(CASCADE_TARGETS))
    if unknown:
        raise InputError(f"cascade {unknown[0]}", f"unknown cascade target; expected one of "
                                                  f"{', '.join(CASCADE_TARGETS)}")
    hashes = {}
    for target in (t for t in CASCADE_TARGETS if t in cascade):
        model = load_generator(cascade[target])
        check_cascade(model, target, os.fspath(cascade[target]),
                      model_grid=generator.preprocessing["model_grid"],
                      normalise=generator.preprocessing.get("normalise"))
        hashes[target] = model.checkpoint_sha256
    return hashes


def _log_cascades(cascade: Mapping[str, str | os.PathLike]) -> None:
    """Log each cascade checkpoint to the active run as ``cascade/<target>.pt``."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="cesynth-cascade-") as tmp:
        for target in (t for t in CASCADE_TARGETS if t in cascade):
            copy = Path(tmp) / f"{target}.pt"
            shutil.copyfile(cascade[target], copy)
            mlflow.log_artifact(str(copy), artifact_path=CASCADE_DIR)


def _cascade_tags(hashes: Mapping[str, str]) -> dict[str, str]:
    if not hashes:
        return {}
    return {"cascade": ",".join(hashes),
            **{f"cascade_{target}_sha256": sha for target, sha in hashes.items()}}


def _input_example(generator: Any, checkpoint_path: Path) -> np.ndarray:
    """A zero patch ``(1, C, 3, Y, X)`` on the checkpoint's model grid."""
    grid = generator.preprocessing.get("model_grid")
    if not grid:
        raise InputError(checkpoint_path, "checkpoint has no preprocessing record; retrain it "
                                          "with the workflow to release it")
    cols, rows, _ = (int(n) for n in grid)
    return np.zeros((1, len(generator.settings.modalities), PATCH_SLICES, rows, cols),
                    dtype=np.float32)


def registry_client(tracking_uri: str | None) -> Any:
    """An MLflow client of ``tracking_uri`` (None: MLflow's default store)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


__all__ = ["CASCADE_DIR", "CASCADE_TARGETS", "CHECKPOINT_ARTIFACTS", "check_cascade",
           "register_release", "registry_client", "resolve_cascade", "resolve_model"]
