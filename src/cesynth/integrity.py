"""Checksums of the workflow's results, recorded when a file is written and checked when read.

A file in ``results/`` that changes after its job wrote it (truncated by a full disk or a copy
that stopped half-way, damaged on the way back from an archive) must not be trained on. Snakemake
cannot see such damage: the file still exists and is newer than its inputs. So every file written
through :func:`cesynth.io.atomic_path` inside the workflow's results folder (the one the workflow
exports as ``CESYNTH_RESULTS_DIR`` to its jobs) gets a hidden sidecar ``.<name>.sha256`` holding
its SHA-256 and size, written just before the file is renamed into place. The readers that feed
training and prediction (:func:`cesynth.io.load_nifti`, :func:`cesynth.checkpoint.read_checkpoint`)
call :func:`verify`: a file whose size or checksum differs from its record is moved aside as
``<name>.damaged`` and the reader stops with one line naming it. The file is then missing, so the
next ``snakemake`` run rebuilds it with the job that made it (and, as it is newer, whatever used
it): Snakemake's own rerun logic, nothing else to learn.

Why check in the reader rather than scan ``results/`` when the workflow starts: a start-up scan
costs every run a read of every result (hundreds of GB in a large study) or, with sizes only,
misses damage that keeps the size; the reader reads the file anyway, so hashing it there costs
about as much as reading it again from the page cache (benchmarks/RESULTS.md, "Reliability"),
and only files that are actually used are checked. Training caches, memory-mapped rather than read
(hundreds of MB per subject at full resolution), are checked by size when training opens them.

A reader must not race the file's writer (between the record and the rename the two disagree);
in the workflow Snakemake starts a job only once the jobs that write its inputs have ended.
Files written outside the results folder (a user's ``cesynth predict --out``) get no sidecar and
are never moved. A file with no sidecar (written by another tool or an older cesynth) is not
checked. Standard library only: every job imports it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cesynth.errors import InputError

ENV_RESULTS_DIR = "CESYNTH_RESULTS_DIR"  # the name cesynth.jobs exports; kept here to stay light
SIDECAR_SUFFIX = ".sha256"
DAMAGED_SUFFIX = ".damaged"
_CHUNK = 1 << 20


def sidecar_of(path: str | os.PathLike) -> Path:
    """The hidden checksum record of ``path``: ``.<name>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def is_managed(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in the workflow's results folder (``CESYNTH_RESULTS_DIR``)."""
    results = os.environ.get(ENV_RESULTS_DIR)
    if not results:
        return False
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(results))


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record(written: str | os.PathLike, final: str | os.PathLike) -> None:
    """Record the checksum and size of ``written`` (the finished temporary file) for ``final``.

    Called before ``written`` is renamed to ``final``: a crash in between leaves a record that
    does not match the old file, which is then rebuilt, never trusted.
    """
    sidecar = sidecar_of(final)
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{file_digest(written)} {os.path.getsize(written)}\n")
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)


def verify(path: str | os.PathLike, *, checksum: bool = True) -> None:
    """Fail when ``path`` is no longer the file that was written there (its record differs).

    Args:
        path: the file about to be read.
        checksum: compare the content's checksum too, not only the size (a reader that maps a
            large file rather than reading it, a training cache, checks the size alone).

    Raises:
        InputError: on ``path``, after moving it aside as ``<name>.damaged`` so that the next
            workflow run rebuilds it.
    """
    sidecar = sidecar_of(path)
    try:
        digest, size = sidecar.read_text().split()
    except (FileNotFoundError, ValueError):
        return  # not written by a workflow job (or a record that cannot be read: no claim)
    found = os.path.getsize(path)
    if found != int(size):
        problem = f"{found} bytes, {size} when it was written (truncated or overwritten)"
    elif checksum and file_digest(path) != digest:
        problem = "its checksum differs from the one recorded when it was written (damaged)"
    else:
        return
    damaged = Path(path).with_name(Path(path).name + DAMAGED_SUFFIX)
    os.replace(path, damaged)
    sidecar.unlink(missing_ok=True)
    raise InputError(path, f"{problem}; moved aside as {damaged.name}: rerun the workflow to "
                           "rebuild it")


__all__ = ["DAMAGED_SUFFIX", "SIDECAR_SUFFIX", "file_digest", "is_managed", "record",
           "sidecar_of", "verify"]
