"""The machine line every benchmark prints beside its results."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_cpu() -> str:
    """CPU model and count, e.g. ``AMD EPYC 7B13, 2 CPUs``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"
