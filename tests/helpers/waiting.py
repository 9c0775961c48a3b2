"""Waiting in tests for something another process does (a checkpoint, a job state)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(ready: Callable[[], bool], *, still_running: Callable[[], None] = lambda: None,
               poll_s: float = 0.05) -> None:
    """Poll until ``ready()`` holds; ``still_running`` fails the test if the awaited process
    ended first. No deadline of its own, so no test asserts on speed: a hang is ended by
    pytest-timeout (pyproject's ``timeout``)."""
    while not ready():
        still_running()
        time.sleep(poll_s)
