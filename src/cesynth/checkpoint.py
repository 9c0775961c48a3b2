"""Training checkpoints: file names, the one safe reader, resume checks, RNG states, run identity.

A checkpoint (format :data:`CHECKPOINT_FORMAT`) is a ``torch.save`` dict written by
:class:`cesynth.train.Trainer`: ``format``, ``settings`` (:meth:`TrainSettings.to_dict`),
``model`` and ``optimizer`` state dicts, the loop position (``stage``, ``epoch``,
``step_in_epoch``, ``global_step``), ``best_psnr``, ``best_epoch``, ``history``, ``rng`` (torch,
numpy, Python and CUDA generator states, :func:`rng_states`), ``world_size`` and
``preprocessing``.

* **Reading**: training (resume, best model) and inference load checkpoints the same way,
  :func:`read_checkpoint` / :func:`read_checkpoint_bytes`: unpickled onto the CPU with
  ``weights_only=True``, so a tampered file cannot run code. Besides tensors and plain Python
  values only the numpy types of the saved numpy RNG state are allowed (the Python RNG state is a
  tuple of ints). A file that is missing, damaged, foreign or of another format is an
  :class:`~cesynth.io.InputError` naming it.
* **Writing**: atomically (:func:`write_checkpoint`), so a crash never leaves half a file, and
  a full disk is one line naming the file while the previous checkpoint stays as it was. In the
  workflow's results folder the checksum is recorded when written and checked when read
  (:mod:`cesynth.integrity`): a damaged checkpoint is moved aside and named, never loaded.
  ``checkpoint_latest.pt`` is the resume point, ``checkpoint_best.pt`` the best validation PSNR.
* **Resuming** (:func:`check_resumable`): only with the same settings, except the execution-only
  :data:`cesynth.settings.EXECUTION_SETTINGS`, and the same number of processes (the data order
  depends on it).
* **Run identity**: a workflow reruns training when its settings or subjects change; only a
  restart of the *same* run may resume. :func:`run_fingerprint` hashes settings and caches, and
  :func:`set_aside_stale_checkpoints` renames another run's checkpoints ``*.superseded.pt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from cesynth.distributed import DistContext
from cesynth.integrity import verify
from cesynth.io import InputError, atomic_path, one_line_error
from cesynth.settings import EXECUTION_SETTINGS, TrainSettings

_log = logging.getLogger(__name__)

CHECKPOINT_LATEST = "checkpoint_latest.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_FINAL = "checkpoint_final.pt"
RUN_FINGERPRINT = "run_fingerprint.txt"
BEST_KEPT = "checkpoint_best.kept.pt"
"""A second link to ``checkpoint_best.pt``, which no rule declares: Snakemake deletes a killed
job's declared outputs before it reruns it (``--rerun-incomplete``), and a resumed run whose best
epoch is behind it could not write the best checkpoint again (:func:`keep_best`)."""
CHECKPOINT_FORMAT = 1



# ---------------------------------------------------------------- reading and writing


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a cesynth checkpoint onto the CPU without running pickled code.

    Args:
        path: a checkpoint file.

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        InputError: the file is missing, unreadable, not a cesynth checkpoint (no ``settings``
            and ``model``), holds objects other than tensors, plain values and numpy RNG
            states, or is of another format.
    """
    try:
        verify(path)
    except FileNotFoundError as err:
        raise InputError(path, "checkpoint not found") from err
    return _load(path, Path(path))


def read_checkpoint_bytes(path: Path) -> tuple[dict[str, Any], bytes]:
    """As :func:`read_checkpoint`, also returning the file's bytes (for a provenance hash).

    The dict is loaded from exactly the bytes returned, read once.

    Args:
        path: a checkpoint file.

    Returns:
        The checkpoint dict and the file's content.

    Raises:
        InputError: as :func:`read_checkpoint`.
    """
    try:
        verify(path)
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise InputError(path, "checkpoint not found") from err
    except OSError as err:
        raise InputError(path, f"unreadable checkpoint ({one_line_error(err)})") from err
    return _load(io.BytesIO(data), Path(path)), data


def write_checkpoint(checkpoint: Mapping[str, Any], path: Path) -> None:
    """Write a checkpoint dict atomically (a temporary file renamed into place).

    Args:
        checkpoint: the dict of :meth:`cesynth.train.Trainer.checkpoint_state`.
        path: the checkpoint file.
    """
    buffer = io.BytesIO()  # torch reports a full disk as a RuntimeError naming no file
    torch.save(checkpoint, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _load(source: Path | IO[bytes], path: Path) -> dict[str, Any]:
    """The one place a checkpoint is unpickled (``weights_only``), then checked."""
    try:
        with _numpy_safe_globals():
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise InputError(path, "checkpoint not found") from err
    except Exception as err:  # torch raises many types for damaged or foreign files
        raise InputError(path, f"unreadable checkpoint ({one_line_error(err)})") from err
    if not isinstance(checkpoint, dict) or not {"settings", "model"} <= checkpoint.keys():
        raise InputError(path, "not a cesynth training checkpoint (no settings and model)")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"checkpoint format {checkpoint.get('format')!r} is not "
                         f"{CHECKPOINT_FORMAT}")
    return checkpoint


@contextlib.contextmanager
def _numpy_safe_globals() -> Iterator[None]:
    """Allow the numpy types of the saved numpy RNG state in a ``weights_only`` load."""
    allowed = [np.empty(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch 2.4: only the process-wide allow-list exists
        torch.serialization.add_safe_globals(allowed)
        yield
        return
    with safe_globals(allowed):
        yield



# ---------------------------------------------------------------- resuming


def check_resumable(checkpoint: Mapping[str, Any], settings: TrainSettings,
                    context: DistContext, path: Path) -> None:
    """Fail unless ``checkpoint`` can continue the run of ``settings`` in ``context``.

    Args:
        checkpoint: a dict of :func:`read_checkpoint`.
        settings: the settings of the run to continue.
        context: the run's processes.
        path: the checkpoint file (named in errors).

    Raises:
        InputError: another format, other settings (beyond the execution-only ones), or
            another number of processes.
    """
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"checkpoint format {checkpoint.get('format')} is not "
                         f"{CHECKPOINT_FORMAT}")
    saved, current = checkpoint["settings"], settings.to_dict()
    differing = sorted(k for k in current
                       if k not in EXECUTION_SETTINGS and saved.get(k) != current[k])
    if differing:
        raise InputError(path, f"written with other settings ({', '.join(differing)}); "
                         "use a new output folder")
    if checkpoint.get("world_size", 1) != context.world_size:
        raise InputError(path, f"written by {checkpoint.get('world_size')} processes, "
                         f"resumed with {context.world_size}: the data order would change")


def check_trunk(checkpoint: Mapping[str, Any], settings: TrainSettings,
                context: DistContext, path: Path) -> None:
    """Fail unless ``checkpoint`` ends every stage of ``settings`` but the last.

    A run whose earlier stages another run trained (a sweep's shared stage 1) starts its last
    stage from that run's final checkpoint, exactly as if it had trained them itself.

    Raises:
        InputError: as :func:`check_resumable` for the first stages, or an unfinished trunk.
    """
    trunk = replace(settings, stages=settings.stages[:-1])
    check_resumable(checkpoint, trunk, context, path)
    if checkpoint["epoch"] != trunk.total_epochs or checkpoint["step_in_epoch"] != 0:
        raise InputError(path, f"trunk stopped at epoch {checkpoint['epoch']} of "
                               f"{trunk.total_epochs}: not finished")


def rng_states() -> dict[str, Any]:
    """This process's torch, numpy, Python (and initialised CUDA) generator states."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Set the generators to the states of :func:`rng_states` (CUDA ones where possible)."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, ValueError):  # fewer GPUs than when saved
            torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------- run identity


def run_fingerprint(settings: TrainSettings, train_caches: Sequence[Path],
                    val_caches: Sequence[Path], start_from: Path | None = None) -> str:
    """A hash of what defines a run: the settings that shape its result (execution settings
    left out, so a run resumes on other hardware), its caches and the trunk it starts from
    (paths and modification times)."""
    files = [*train_caches, *val_caches, *([start_from] if start_from else [])]
    stamps = [(str(p), p.stat().st_mtime_ns) for p in files]
    shaping = {k: v for k, v in settings.to_dict().items() if k not in EXECUTION_SETTINGS}
    payload = json.dumps({"settings": shaping, "caches": stamps}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def keep_best(best: Path) -> None:
    """Link (or copy) the best checkpoint to :data:`BEST_KEPT` beside it, atomically."""
    _link_or_copy(best, best.with_name(BEST_KEPT))


def restore_best(best: Path) -> bool:
    """Put back a best checkpoint deleted after it was written (its kept link survives).

    Returns:
        True when ``best`` was restored.
    """
    kept = best.with_name(BEST_KEPT)
    if best.exists() or not kept.exists():
        return False
    _link_or_copy(kept, best)
    _log.warning("%s: restored from %s (deleted after it was written; the run resumes past its "
                 "best epoch)", best, kept.name)
    return True


def _link_or_copy(source: Path, destination: Path) -> None:
    """A second hard link to ``source`` at ``destination`` (a copy on filesystems without hard
    links), put in place atomically."""
    with atomic_path(destination) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def set_aside_stale_checkpoints(out_dir: Path, fingerprint: str) -> bool:
    """Keep ``out_dir``'s checkpoints only if they belong to the run ``fingerprint`` names.

    Checkpoints of another run are renamed ``*.superseded.pt`` (never deleted) and logged.

    Returns:
        True when a checkpoint of another run was set aside.
    """
    marker = out_dir / RUN_FINGERPRINT
    latest = out_dir / CHECKPOINT_LATEST
    stale = latest.exists() and (not marker.exists() or marker.read_text().strip() != fingerprint)
    if stale:
        for name in (CHECKPOINT_LATEST, CHECKPOINT_BEST, CHECKPOINT_FINAL, BEST_KEPT):
            if (out_dir / name).exists():
                (out_dir / name).replace(out_dir / name.replace(".pt", ".superseded.pt"))
        _log.warning("%s: checkpoints of an earlier run (other settings or subjects) set aside "
                     "as *.superseded.pt; training starts afresh", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(fingerprint + "\n")
    return stale


__all__ = ["BEST_KEPT", "CHECKPOINT_BEST", "CHECKPOINT_FINAL", "CHECKPOINT_FORMAT",
           "CHECKPOINT_LATEST", "RUN_FINGERPRINT", "check_resumable", "check_trunk", "keep_best",
           "read_checkpoint", "read_checkpoint_bytes", "restore_best", "restore_rng_states",
           "rng_states", "run_fingerprint", "set_aside_stale_checkpoints", "write_checkpoint"]
