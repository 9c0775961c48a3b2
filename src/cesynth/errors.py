"""The error a job reports in one line, and how a third-party error is quoted in it. Standard
library only: every job imports it, the ones that read no image too."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input: names who (a subject or a file) and what is wrong, for a one-line message."""

    def __init__(self, who: str | os.PathLike, problem: str):
        self.who = str(who)
        self.problem = problem
        super().__init__(f"{self.who}: {problem}")


MESSAGE_CHARS = 300
"""Longest third-party error text quoted inside a one-line :class:`InputError`."""


def one_line_error(err: BaseException) -> str:
    """``Type: message`` of an exception on one line, cut to :data:`MESSAGE_CHARS`."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 3] + "..."


__all__ = ["MESSAGE_CHARS", "InputError", "one_line_error"]
