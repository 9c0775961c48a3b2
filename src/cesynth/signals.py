"""SIGTERM as an exit that unwinds: what SLURM (time limit, ``scancel``) and Snakemake send to
stop a job. Raising instead of dying on the spot lets ``finally`` clauses run first: temporary
files are removed, the job's MLflow run ends KILLED. Standard library only: every job imports it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

EXIT_TERMINATED = 128 + signal.SIGTERM
"""Exit status after a SIGTERM: 143, what a process the signal killed reports. Jobs, training
(after saving its checkpoint) and the ``cesynth`` command all exit with it."""


class Terminated(SystemExit):
    """Raised by the handler of :func:`sigterm_raises` (exit status :data:`EXIT_TERMINATED`)."""

    def __init__(self) -> None:
        super().__init__(EXIT_TERMINATED)


@contextlib.contextmanager
def sigterm_raises(*, keep_existing: bool = False) -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (main thread only).

    Args:
        keep_existing: leave a handler someone else installed (training's checkpoint on SIGTERM,
            the job's MLflow run) in place; only SIGTERM's default action is replaced.
    """
    current = signal.getsignal(signal.SIGTERM)
    if (threading.current_thread() is not threading.main_thread()
            or (keep_existing and current is not signal.SIG_DFL)):
        yield
        return

    def terminate(_signum: int, _frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, current)


def is_termination(err: BaseException) -> bool:
    """Whether ``err`` is the exit a SIGTERM caused (any ``SystemExit`` with status 143)."""
    return isinstance(err, SystemExit) and err.code == EXIT_TERMINATED


__all__ = ["EXIT_TERMINATED", "Terminated", "is_termination", "sigterm_raises"]
